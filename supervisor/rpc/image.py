"""ListImages (and StreamImages), ImageStatus, PullImage, RemoveImage, ImageFsInfo.

PullImage is the image pool's pull plus the storage pool's unpack of every
layer (a layer that fails to unpack, e.g. one escaping its root, takes the
image back out: nothing half-pulled is listed), and counts pull metrics.
RemoveImage also removes unpacked layers no other image uses.

ImageStatus and ListImages are answered from the status cache while no
image op ran since (supervisor/status_cache.py): every pull and removal,
whoever sends it, drops every image answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ...proto import api_pb2 as api
from ...proto import image_ops, storage_ops
from ...proto.codes import Code
from ...proto.contract import Empty
from ...proto.errors import BusError, InvalidArgument
from ..metrics import Metrics
from ..opclient import Deadline, OpClient
from ..status_cache import Answer, StatusCache, image_key, images_key
from .chunks import chunked
from .layers import ensure_unpacked, remove_unused

# Image answers depend on no object id: any image op drops them all.
NO_IDS: frozenset[str] = frozenset()


class ImageService:
    """The image RPCs; holds the op client, the pull metrics and the status
    cache (ImageStatus and ListImages answers)."""

    def __init__(self, ops: OpClient, metrics: Metrics, cache: StatusCache) -> None:
        self.ops = ops
        self.metrics = metrics
        self.cache = cache

    async def list_images(self, request: api.ListImagesRequest) -> api.ListImagesResponse:
        async def fetch() -> Answer:
            result = await self.ops(image_ops.LIST_IMAGES,
                                    image_ops.ListImages(request=request.SerializeToString()))
            return Answer(result.response, NO_IDS)

        # The filter's image name is all the pool reads of the request.
        return api.ListImagesResponse.FromString(
            await self.cache.read(images_key(request.filter.image.image), fetch))

    async def stream_images(self, request: api.StreamImagesRequest
                            ) -> AsyncIterator[api.StreamImagesResponse]:
        listed = await self.list_images(api.ListImagesRequest(filter=request.filter))
        for part in chunked(listed.images):
            yield api.StreamImagesResponse(images=part)

    async def image_status(self, request: api.ImageStatusRequest) -> api.ImageStatusResponse:
        if request.verbose:  # the info is built fresh, never kept
            result = await self.ops(image_ops.IMAGE_STATUS,
                                    image_ops.ImageStatus(request=request.SerializeToString()))
            return api.ImageStatusResponse.FromString(result.response)
        # The image name is all the pool reads of a non-verbose request.
        name = request.image.image
        return api.ImageStatusResponse.FromString(
            await self.cache.read(image_key(name), lambda: self._status_answer(name)))

    async def _status_answer(self, name: str) -> Answer:
        request = api.ImageStatusRequest(image=api.ImageSpec(image=name))
        result = await self.ops(image_ops.IMAGE_STATUS,
                                image_ops.ImageStatus(request=request.SerializeToString()))
        return Answer(result.response, NO_IDS)

    async def pull_image(self, request: api.PullImageRequest) -> api.PullImageResponse:
        try:
            pulled = await self.ops(image_ops.PULL_IMAGE,
                                    image_ops.PullImage(request=request.SerializeToString()))
        except BusError as exc:
            self.metrics.observe_pull(exc.code.name)
            raise
        self.metrics.observe_pull("OK", pulled.bytes_received, pulled.layers_fetched)
        response = api.PullImageResponse.FromString(pulled.response)
        # The pulled name's ImageStatus, which the kubelet reads next, is
        # fetched for the status cache while the layers unpack.
        token, name = self.cache.token(), request.image.image
        seed = asyncio.ensure_future(self._status_answer(name))
        try:
            await self._unpack(response.image_ref)
        except BaseException:
            seed.cancel()
            with contextlib.suppress(BaseException):
                await seed
            raise
        with contextlib.suppress(BusError):  # only a seed: the read asks again
            self.cache.put(image_key(name), await seed, token)
        return response

    async def _unpack(self, image_ref: str) -> None:
        image = await self.ops(image_ops.RESOLVE_IMAGE, image_ops.ResolveImage(image=image_ref))
        try:
            await ensure_unpacked(self.ops, image.layers)
        except InvalidArgument:
            # The content itself is refused (a layer escaping its root, a
            # wrong diff_id): the image can never run, so it is not kept. Any
            # other failure (a worker restart, the deadline) leaves it for a
            # retry.
            removal = api.RemoveImageRequest(image=api.ImageSpec(image=image.id))
            await self.ops(image_ops.REMOVE_IMAGE,
                           image_ops.RemoveImage(request=removal.SerializeToString()),
                           Deadline.CLEANUP)
            await remove_unused(self.ops, image.layers)
            raise

    async def remove_image(self, request: api.RemoveImageRequest) -> api.RemoveImageResponse:
        image: image_ops.ResolvedImage | None = None
        try:
            image = await self.ops(image_ops.RESOLVE_IMAGE,
                                   image_ops.ResolveImage(image=request.image.image))
        except BusError as exc:
            # The image pool gives the answer (and its error) below; an image
            # whose config is lost is removed all the same, and its layers
            # go at the next start's reconcile.
            if exc.code not in (Code.NOT_FOUND, Code.INVALID_ARGUMENT, Code.DATA_LOSS):
                raise
        removed = await self.ops(image_ops.REMOVE_IMAGE,
                                 image_ops.RemoveImage(request=request.SerializeToString()))
        if image is not None:
            await remove_unused(self.ops, image.layers)
        return api.RemoveImageResponse.FromString(removed.response)

    async def image_fs_info(self, request: api.ImageFsInfoRequest) -> api.ImageFsInfoResponse:
        result = await self.ops(storage_ops.IMAGE_FS_INFO, Empty())
        return api.ImageFsInfoResponse.FromString(result.response)
