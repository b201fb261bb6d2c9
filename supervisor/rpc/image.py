"""ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo; StreamImages
is routed to the image pool (UNIMPLEMENTED there).

PullImage is the image pool's pull plus the storage pool's unpack of every
layer (a layer that fails to unpack, e.g. one escaping its root, takes the
image back out: nothing half-pulled is listed), and counts pull metrics.
RemoveImage also removes unpacked layers no other image uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from ...proto.errors import BusError, InvalidArgument, NotFound
from .call import Call, cleanup_deadline, route, route_stream, to_args
from .layers import ensure_unpacked, remove_unused


async def list_images(call: Call, request: api.ListImagesRequest) -> api.ListImagesResponse:
    return await route(call, "ListImages", request, api.ListImagesResponse)


async def image_status(call: Call, request: api.ImageStatusRequest) -> api.ImageStatusResponse:
    return await route(call, "ImageStatus", request, api.ImageStatusResponse)


async def pull_image(call: Call, request: api.PullImageRequest) -> api.PullImageResponse:
    try:
        result = await call.op("image.pull_image", to_args(request))
    except BusError as exc:
        call.metrics.observe_pull(exc.code.name)
        raise
    image_id = result["image_ref"]
    stats = result.get("stats", {})
    call.metrics.observe_pull("OK", stats.get("bytes", 0), stats.get("layers", 0))
    image = await call.op("image.resolve_image", {"image": image_id})
    try:
        await ensure_unpacked(call, image["layers"])
    except InvalidArgument:
        # The content itself is refused (a layer escaping its root, a wrong
        # diff_id): the image can never run, so it is not kept. Any other
        # failure (a worker restart, the deadline) leaves it for a retry.
        await call.op("image.remove_image", {"image": {"image": image_id}},
                      deadline=cleanup_deadline())
        await remove_unused(call, image["layers"])
        raise
    return api.PullImageResponse(image_ref=image_id)


async def remove_image(call: Call, request: api.RemoveImageRequest) -> api.RemoveImageResponse:
    try:
        image = await call.op("image.resolve_image", {"image": request.image.image})
    except (NotFound, InvalidArgument):
        image = None  # the image pool gives the answer (and its error) below
    await call.op("image.remove_image", to_args(request))
    if image is not None:
        await remove_unused(call, image["layers"])
    return api.RemoveImageResponse()


async def image_fs_info(call: Call, request: api.ImageFsInfoRequest) -> api.ImageFsInfoResponse:
    return await route(call, "ImageFsInfo", request, api.ImageFsInfoResponse)


def stream_images(
    call: Call, request: api.StreamImagesRequest
) -> AsyncIterator[api.StreamImagesResponse]:
    return route_stream(call, "StreamImages", request, api.StreamImagesResponse)
