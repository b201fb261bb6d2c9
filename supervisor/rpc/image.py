"""ListImages, StreamImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo.

Routed to the owning pool, which answers UNIMPLEMENTED until the issue
that implements them lands (issues 3 and 5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from .call import Call, route, route_stream


async def list_images(call: Call, request: api.ListImagesRequest) -> api.ListImagesResponse:
    return await route(call, "ListImages", request, api.ListImagesResponse)


async def image_status(call: Call, request: api.ImageStatusRequest) -> api.ImageStatusResponse:
    return await route(call, "ImageStatus", request, api.ImageStatusResponse)


async def pull_image(call: Call, request: api.PullImageRequest) -> api.PullImageResponse:
    return await route(call, "PullImage", request, api.PullImageResponse)


async def remove_image(call: Call, request: api.RemoveImageRequest) -> api.RemoveImageResponse:
    return await route(call, "RemoveImage", request, api.RemoveImageResponse)


async def image_fs_info(call: Call, request: api.ImageFsInfoRequest) -> api.ImageFsInfoResponse:
    return await route(call, "ImageFsInfo", request, api.ImageFsInfoResponse)


def stream_images(
    call: Call, request: api.StreamImagesRequest
) -> AsyncIterator[api.StreamImagesResponse]:
    return route_stream(call, "StreamImages", request, api.StreamImagesResponse)
