"""The image pool's settings: supervisor/config.py owns each key and its
default, and the worker reads what the supervisor wrote, strictly."""

from __future__ import annotations

import pytest

from podvisor.supervisor import config as cfg
from podvisor.workers.image.settings import ImageSettings


def worker_view(image: dict[str, object]) -> ImageSettings:
    config = cfg.from_dict({"image": image})
    return ImageSettings.from_settings(cfg.to_dict(config))


def test_the_worker_reads_the_config_defaults() -> None:
    settings = worker_view({})
    assert settings.registries_conf == "/etc/containers/registries.conf"
    assert settings.signature_policy == "/etc/containers/policy.json"
    assert settings.pull_progress_timeout == 300.0
    assert settings.max_parallel_downloads == 3


def test_max_parallel_downloads_is_a_checked_config_key() -> None:
    assert worker_view({"max_parallel_downloads": 8}).max_parallel_downloads == 8
    for bad in (0, 65, "2", True):
        with pytest.raises(cfg.ConfigError, match=r"podvisor\.image\.max_parallel_downloads"):
            cfg.from_dict({"image": {"max_parallel_downloads": bad}})


def test_certs_dirs_is_not_a_config_key() -> None:
    # containers-certs.d(5) fixes the roots (tls.DEFAULT_CERTS_DIRS).
    with pytest.raises(cfg.ConfigError, match="certs_dirs"):
        cfg.from_dict({"image": {"certs_dirs": ["/etc/containers/certs.d"]}})


def test_a_key_the_supervisor_did_not_write_is_a_bug() -> None:
    settings = cfg.to_dict(cfg.from_dict({}))
    image = settings["image"]
    assert isinstance(image, dict)
    del image["max_parallel_downloads"]
    with pytest.raises(KeyError, match="max_parallel_downloads"):
        ImageSettings.from_settings(settings)
