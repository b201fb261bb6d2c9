"""ListImages, ImageStatus, PullImage, RemoveImage, ImageFsInfo.

PullImage is the image pool's pull plus the storage pool's unpack of every
layer (a layer that fails to unpack, e.g. one escaping its root, takes the
image back out: nothing half-pulled is listed), and counts pull metrics.
RemoveImage also removes unpacked layers no other image uses.
"""

from __future__ import annotations

from ...proto import api_pb2 as api
from ...proto.errors import BusError, InvalidArgument, NotFound
from ..metrics import Metrics
from ..opclient import Deadline, OpClient
from .layers import ensure_unpacked, remove_unused
from .messages import from_result, to_args


class ImageService:
    """The image RPCs; holds the op client and the pull metrics."""

    def __init__(self, ops: OpClient, metrics: Metrics) -> None:
        self.ops = ops
        self.metrics = metrics

    async def list_images(self, request: api.ListImagesRequest) -> api.ListImagesResponse:
        result = await self.ops("image.list_images", to_args(request))
        return from_result(result, api.ListImagesResponse)

    async def image_status(self, request: api.ImageStatusRequest) -> api.ImageStatusResponse:
        result = await self.ops("image.image_status", to_args(request))
        return from_result(result, api.ImageStatusResponse)

    async def pull_image(self, request: api.PullImageRequest) -> api.PullImageResponse:
        try:
            result = await self.ops("image.pull_image", to_args(request))
        except BusError as exc:
            self.metrics.observe_pull(exc.code.name)
            raise
        image_id = result["image_ref"]
        stats = result.get("stats", {})
        self.metrics.observe_pull("OK", stats.get("bytes", 0), stats.get("layers", 0))
        image = await self.ops("image.resolve_image", {"image": image_id})
        try:
            await ensure_unpacked(self.ops, image["layers"])
        except InvalidArgument:
            # The content itself is refused (a layer escaping its root, a
            # wrong diff_id): the image can never run, so it is not kept. Any
            # other failure (a worker restart, the deadline) leaves it for a
            # retry.
            await self.ops("image.remove_image", {"image": {"image": image_id}},
                           Deadline.CLEANUP)
            await remove_unused(self.ops, image["layers"])
            raise
        return api.PullImageResponse(image_ref=image_id)

    async def remove_image(self, request: api.RemoveImageRequest) -> api.RemoveImageResponse:
        try:
            image = await self.ops("image.resolve_image", {"image": request.image.image})
        except (NotFound, InvalidArgument):
            image = None  # the image pool gives the answer (and its error) below
        await self.ops("image.remove_image", to_args(request))
        if image is not None:
            await remove_unused(self.ops, image["layers"])
        return api.RemoveImageResponse()

    async def image_fs_info(self, request: api.ImageFsInfoRequest) -> api.ImageFsInfoResponse:
        result = await self.ops("storage.image_fs_info", to_args(request))
        return from_result(result, api.ImageFsInfoResponse)
