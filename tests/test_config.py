"""Unit tests of supervisor/config.py: layering, derived defaults, errors, round trips.

Every test passes its own files and drop-in directory under tmp_path, so the
host's /etc/podvisor never leaks in; the one test of the default paths
points them at tmp_path with monkeypatch.
"""

from __future__ import annotations

import argparse
import json
import logging
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podvisor.supervisor import config
from podvisor.supervisor.config import Config, ConfigError, RuntimeHandler


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def dropin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "podvisor.toml.d"
    directory.mkdir()
    return directory


def load_text(tmp_path: Path, text: str, **overrides: object) -> Config:
    """Load one main file holding text, no drop-ins, and dotted-key overrides."""
    main = write(tmp_path / "podvisor.toml", text)
    empty = tmp_path / "empty.d"
    empty.mkdir(exist_ok=True)
    return config.load(main, str(empty), overrides)


def test_defaults_when_default_paths_are_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.setattr(config, "DEFAULT_CONFIG_DIR", str(tmp_path / "absent.d"))
    loaded = config.load(None, None, {})
    assert loaded == Config()
    assert loaded.runroot == "/run/podvisor"
    assert loaded.api.listen == "/run/podvisor/podvisor.sock"
    assert loaded.api.grpc_max_send_msg_size == 80 * 1024 * 1024
    assert loaded.runtime.default_runtime == "crun"
    assert loaded.runtime.runtimes["runc"] == RuntimeHandler(
        runtime_path="/usr/sbin/runc", runtime_root="/run/podvisor/runc")
    assert loaded.runtime.runtimes["crun"].runtime_root == "/run/podvisor/crun"
    assert loaded.network.plugin_dirs == ("/opt/cni/bin", "/usr/lib/cni")
    assert loaded.workers.pool_sizes() == {"image": 1, "storage": 1, "runtime": 1, "net": 1,
                                           "stream": 1}
    assert loaded.stream.address == "127.0.0.1" and loaded.stream.port == 0
    assert loaded.stream.token_ttl == 60.0 and loaded.stream.stream_idle_timeout == 14400.0
    assert loaded.stats.included_pod_metrics == ("cpu", "disk", "diskIO", "memory", "network",
                                                 "oom", "process", "spec")
    assert loaded.stats.layer_usage_interval == 10.0


def test_default_paths_are_read_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = write(tmp_path / "podvisor.toml", "[podvisor.workers]\nimage = 3\n")
    write(tmp_path / "podvisor.toml.d" / "10.toml", "[podvisor.workers]\nnet = 4\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", main)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_DIR", str(tmp_path / "podvisor.toml.d"))
    workers = config.load(None, None, {}).workers
    assert (workers.image, workers.net) == (3, 4)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Config()


def test_file_overrides_defaults_and_leaves_other_keys(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, """
[podvisor]
log_level = "debug"
[podvisor.api]
request_timeout = 30          # an integer is a fine number of seconds
[podvisor.workers]
image = 4
[podvisor.network]
plugin_dirs = ["/usr/libexec/cni"]
""")
    assert loaded.log_level == "debug"
    assert loaded.api.request_timeout == 30.0
    assert isinstance(loaded.api.request_timeout, float)
    assert loaded.workers.image == 4
    assert loaded.workers.storage == 1
    assert loaded.network.plugin_dirs == ("/usr/libexec/cni",)
    assert loaded.log_format == "text"


def test_drop_ins_apply_in_lexical_order_key_by_key(tmp_path: Path, dropin_dir: Path) -> None:
    main = write(tmp_path / "podvisor.toml", """
[podvisor.workers]
image = 3
net = 4
""")
    write(dropin_dir / "20-b.toml", "[podvisor.workers]\nimage = 7\n")
    write(dropin_dir / "10-a.toml", "[podvisor.workers]\nimage = 5\nmax_inflight = 32\n")
    # Not drop-ins: wrong suffix, and a directory.
    write(dropin_dir / "30-c.toml.bak", "[podvisor.workers]\nimage = 9\n")
    (dropin_dir / "40-d.toml").mkdir()
    workers = config.load(main, str(dropin_dir), {}).workers
    assert (workers.image, workers.net, workers.max_inflight) == (7, 4, 32)


def test_drop_in_adds_a_handler_and_changes_one_key_of_another(
    tmp_path: Path, dropin_dir: Path
) -> None:
    main = write(tmp_path / "podvisor.toml", '[podvisor.runtime]\ndefault_runtime = "runc"\n')
    write(dropin_dir / "50-kata.toml", """
[podvisor.runtime]
default_runtime = "kata"
[podvisor.runtime.runtimes.kata]
runtime_path = "/opt/kata/bin/kata-runtime"
[podvisor.runtime.runtimes.runc]
runtime_path = "/usr/local/sbin/runc"
""")
    runtime = config.load(main, str(dropin_dir), {}).runtime
    assert runtime.default_runtime == "kata"
    assert set(runtime.runtimes) == {"runc", "crun", "kata"}
    assert runtime.runtimes["kata"] == RuntimeHandler(
        runtime_path="/opt/kata/bin/kata-runtime", runtime_root="/run/podvisor/kata")
    assert runtime.runtimes["runc"] == RuntimeHandler(
        runtime_path="/usr/local/sbin/runc", runtime_root="/run/podvisor/runc")
    assert runtime.runtimes["crun"].runtime_path == "/usr/bin/crun"


def test_flags_override_files(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    args = parser.parse_args([
        "--config", "/somewhere/podvisor.toml", "--listen", "/tmp/cri.sock",
        "--log-level", "trace", "--cni-plugin-dir", "/a", "--cni-plugin-dir", "/b",
        "--no-enable-metrics", "--metrics-port", "0", "--default-runtime", "runc",
    ])
    assert args.config == "/somewhere/podvisor.toml"
    assert args.config_dir is None
    overrides = config.flag_overrides(args)
    assert "config" not in overrides
    loaded = load_text(tmp_path, """
[podvisor]
log_level = "error"
[podvisor.api]
listen = "/run/elsewhere.sock"
[podvisor.network]
plugin_dirs = ["/x", "/y", "/z"]
[podvisor.metrics]
metrics_host = "0.0.0.0"
metrics_port = 9100
""", **overrides)
    assert loaded.api.listen == "/tmp/cri.sock"
    assert loaded.log_level == "trace"
    assert loaded.network.plugin_dirs == ("/a", "/b")
    assert loaded.metrics.enable_metrics is False
    assert loaded.metrics.metrics_port == 0
    assert loaded.runtime.default_runtime == "runc"  # not the default (crun)
    # A flag not given leaves the file's value.
    assert loaded.metrics.metrics_host == "0.0.0.0"


def test_flags_not_given_override_nothing() -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    assert config.flag_overrides(parser.parse_args([])) == {}


def test_runroot_moves_derived_defaults_but_not_explicit_values(tmp_path: Path) -> None:
    moved = load_text(tmp_path, '[podvisor]\nrunroot = "/run/pv2/"\n')
    assert moved.runroot == "/run/pv2"
    assert moved.api.listen == "/run/pv2/podvisor.sock"
    assert moved.runtime.runtimes["runc"].runtime_root == "/run/pv2/runc"
    assert moved.runtime.runtimes["crun"].runtime_root == "/run/pv2/crun"

    pinned = load_text(tmp_path, """
[podvisor.api]
listen = "/run/podvisor/podvisor.sock"    # the literal default, set on purpose
[podvisor.runtime.runtimes.runc]
runtime_root = "/run/runc"
""", **{"podvisor.runroot": "/run/pv3"})
    assert pinned.api.listen == "/run/podvisor/podvisor.sock"
    assert pinned.runtime.runtimes["runc"].runtime_root == "/run/runc"
    assert pinned.runtime.runtimes["crun"].runtime_root == "/run/pv3/crun"


def error_of(tmp_path: Path, text: str, **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, **overrides)
    return caught.value


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("[podvisor.api]\nlisen = '/x'\n", "podvisor.api.lisen", "unknown key podvisor.api.lisen"),
    ("[crio]\nroot = '/x'\n", "crio", "unknown key crio"),
    ("[podvisor.api]\nstream_idle_timeout = ''\n", "podvisor.api.stream_idle_timeout",
     "unknown key"),
    ("[podvisor.runtime.runtimes.runc]\nruntime_args = []\n",
     "podvisor.runtime.runtimes.runc.runtime_args", "unknown key"),
    ("[podvisor]\napi = 3\n", "podvisor.api", "expected a table, got 3"),
    ("[podvisor.workers]\nimage = 'two'\n", "podvisor.workers.image",
     'expected an integer from 1 to 64, got "two"'),
    ("[podvisor.workers]\nimage = 65\n", "podvisor.workers.image",
     "expected an integer from 1 to 64, got 65"),
    ("[podvisor.workers]\nmax_inflight = 0\n", "podvisor.workers.max_inflight", "1 to 1024"),
    ("[podvisor.workers]\nfatal_after = true\n", "podvisor.workers.fatal_after",
     "expected an integer >= 1, got true"),
    ("[podvisor.workers]\nheartbeat_interval = 0\n", "podvisor.workers.heartbeat_interval",
     "expected a number of seconds > 0, got 0"),
    ("[podvisor.workers]\nstop_timeout = -1.0\n", "podvisor.workers.stop_timeout", ">= 0"),
    ("[podvisor.workers]\nstart_timeout = inf\n", "podvisor.workers.start_timeout", "> 0"),
    ("[podvisor.workers]\nbackoff_cap = 0.25\n", "podvisor.workers.backoff_cap",
     "at least backoff_base"),
    ("[podvisor.workers]\nbackoff_base = 60\n", "podvisor.workers.backoff_base",
     "at least backoff_base"),
    ("[podvisor.metrics]\nmetrics_port = 65536\n", "podvisor.metrics.metrics_port", "0 to 65535"),
    ("[podvisor.metrics]\nenable_metrics = 'yes'\n", "podvisor.metrics.enable_metrics",
     "expected true or false"),
    ("[podvisor]\nlog_level = 'verbose'\n", "podvisor.log_level", "expected one of fatal|"),
    ("[podvisor]\nlog_format = 'logfmt'\n", "podvisor.log_format", "text|json"),
    ("[podvisor.runtime]\ncgroup_manager = 'cgroupv2'\n", "podvisor.runtime.cgroup_manager",
     "cgroupfs|systemd"),
    ("[podvisor]\nroot = 'var/lib/podvisor'\n", "podvisor.root", "expected an absolute path"),
    ("[podvisor]\nrunroot = 5\n", "podvisor.runroot", "expected an absolute path, got 5"),
    # conmon's sockets under it would pass the 107-byte unix socket limit.
    ("[podvisor]\nrunroot = '/run/" + "r" * 28 + "'\n", "podvisor.runroot",
     "at most 32 bytes"),
    ("[podvisor.api]\nlisten = 'podvisor.sock'\n", "podvisor.api.listen", "absolute path"),
    ("[podvisor.network]\nnetwork_dir = 'net.d'\n", "podvisor.network.network_dir",
     "absolute path"),
    ("[podvisor.network]\nplugin_dirs = ['/opt/cni/bin', 'bin']\n",
     "podvisor.network.plugin_dirs", "expected a list of absolute paths"),
    ("[podvisor.network]\nplugin_dirs = '/opt/cni/bin'\n", "podvisor.network.plugin_dirs",
     "expected a list of absolute paths"),
    ("[podvisor.image]\npinned_images = [1]\n", "podvisor.image.pinned_images",
     "list of non-empty strings"),
    ("[podvisor.image]\nsignature_policy = 'policy.json'\n",
     "podvisor.image.signature_policy", "absolute path"),
    ("[podvisor.runtime.runtimes.runc]\nruntime_path = 'runc'\n",
     "podvisor.runtime.runtimes.runc.runtime_path", "absolute path"),
    ("[podvisor.runtime.runtimes.runc]\nruntime_type = 'vm'\n",
     "podvisor.runtime.runtimes.runc.runtime_type", "expected one of oci"),
    ("[podvisor.runtime.runtimes.Kata]\nruntime_path = '/bin/kata'\n",
     "podvisor.runtime.runtimes.Kata", "DNS label"),
    ("[podvisor.runtime.runtimes.kata]\n", "podvisor.runtime.runtimes.kata.runtime_path",
     "required for a handler that is not built in"),
    ("[podvisor.runtime]\ndefault_runtime = 'kata'\n", "podvisor.runtime.default_runtime",
     'no handler "kata"'),
    ("[podvisor.runtime]\nconmon_cgroup = 'system.slice'\n", "podvisor.runtime.conmon_cgroup",
     'must be "pod" or an absolute path'),
    ("[podvisor.runtime]\ncgroup_manager = 'systemd'\nconmon_cgroup = '/conmon'\n",
     "podvisor.runtime.conmon_cgroup", 'must be "pod" or a slice name'),
    ("[podvisor.runtime]\nconmon_cgroup = 'conmon'\n", "podvisor.runtime.conmon_cgroup",
     "systemd slice name"),
    ("[podvisor.stats]\nincluded_pod_metrics = ['cpu', 'hugetlb']\n",
     "podvisor.stats.included_pod_metrics", "metric groups from cpu, disk"),
    ("[podvisor.stats]\nincluded_pod_metrics = ['all', 'cpu']\n",
     "podvisor.stats.included_pod_metrics", '"all" must be the only element'),
    ("[podvisor.stats]\nlayer_usage_budget = 0\n", "podvisor.stats.layer_usage_budget",
     "above 0 and at most 1"),
    ("[podvisor.stats]\nlayer_usage_interval = -1\n", "podvisor.stats.layer_usage_interval",
     "> 0"),
])
def test_bad_value_names_key_and_file(tmp_path: Path, text: str, key: str, problem: str) -> None:
    error = error_of(tmp_path, text)
    path = str(tmp_path / "podvisor.toml")
    assert error.source == path
    assert error.key == key
    assert str(error).startswith(f"{path}: ")
    assert key in str(error)
    assert problem in str(error)


@pytest.mark.parametrize(("overrides", "key", "problem"), [
    ({"podvisor.api.lisen": "/x"}, "podvisor.api.lisen", "unknown key podvisor.api.lisen"),
    ({"api.listen": "/x"}, "api", "unknown key api"),
    ({"podvisor.metrics.metrics_port": "9090"}, "podvisor.metrics.metrics_port",
     'got "9090"'),
    ({"podvisor.runroot": "run"}, "podvisor.runroot", "absolute path"),
    ({"podvisor.network.plugin_dirs": ["rel"]}, "podvisor.network.plugin_dirs", "absolute"),
    ({"podvisor.runtime.default_runtime": "kata"}, "podvisor.runtime.default_runtime",
     "no handler"),
])
def test_bad_override_says_command_line(
    tmp_path: Path, overrides: dict[str, object], key: str, problem: str
) -> None:
    error = error_of(tmp_path, "", **overrides)
    assert error.source == "command line"
    assert error.key == key
    assert str(error).startswith("command line: ")
    assert key in str(error)
    assert problem in str(error)


def test_error_in_an_overridden_layer_still_names_its_file(
    tmp_path: Path, dropin_dir: Path
) -> None:
    main = write(tmp_path / "podvisor.toml", "[podvisor.workers]\nimage = 0\n")
    write(dropin_dir / "10.toml", "[podvisor.workers]\nimage = 2\n")
    with pytest.raises(ConfigError, match=r"podvisor\.toml: podvisor\.workers\.image: "):
        config.load(main, str(dropin_dir), {})


def test_error_in_a_drop_in_names_the_drop_in(tmp_path: Path, dropin_dir: Path) -> None:
    main = write(tmp_path / "podvisor.toml", "")
    bad = write(dropin_dir / "10-bad.toml", "[podvisor.metrics]\nmetrics_prt = 1\n")
    with pytest.raises(ConfigError) as caught:
        config.load(main, str(dropin_dir), {})
    assert str(caught.value) == f"{bad}: unknown key podvisor.metrics.metrics_prt"


def test_default_runtime_error_names_the_file_that_set_it(
    tmp_path: Path, dropin_dir: Path
) -> None:
    main = write(tmp_path / "podvisor.toml", "")
    dropin = write(dropin_dir / "10.toml", "[podvisor.runtime]\ndefault_runtime = 'youki'\n")
    with pytest.raises(ConfigError) as caught:
        config.load(main, str(dropin_dir), {})
    assert caught.value.source == dropin
    assert caught.value.key == "podvisor.runtime.default_runtime"


@pytest.mark.parametrize("text", [
    "[podvisor\nroot = '/x'\n",
    "[podvisor]\nroot = /x\n",
    "[podvisor]\nroot = '/a'\nroot = '/b'\n",
])
def test_bad_toml_names_the_file(tmp_path: Path, dropin_dir: Path, text: str) -> None:
    main = write(tmp_path / "podvisor.toml", "")
    bad = write(dropin_dir / "10.toml", text)
    with pytest.raises(ConfigError) as caught:
        config.load(main, str(dropin_dir), {})
    assert str(caught.value).startswith(f"{bad}: invalid TOML: ")
    assert "line" in str(caught.value)


def test_non_utf8_file_names_the_file(tmp_path: Path, dropin_dir: Path) -> None:
    main = tmp_path / "podvisor.toml"
    main.write_bytes(b"[podvisor]\nroot = '/\xff'\n")
    with pytest.raises(ConfigError, match=f"^{main}: "):
        config.load(str(main), str(dropin_dir), {})


def test_explicit_missing_file_is_an_error(tmp_path: Path, dropin_dir: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"^{missing}: no such file"):
        config.load(missing, str(dropin_dir), {})


def test_explicit_missing_dir_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "podvisor.toml", "")
    missing = str(tmp_path / "nope.d")
    with pytest.raises(ConfigError, match=f"^{missing}: no such directory"):
        config.load(main, missing, {})


def test_dir_given_as_a_file_is_an_error(tmp_path: Path) -> None:
    main = write(tmp_path / "podvisor.toml", "")
    with pytest.raises(ConfigError, match=f"^{main}: cannot list"):
        config.load(main, main, {})


def unusual_config(tmp_path: Path) -> Config:
    return load_text(tmp_path, r'''
[podvisor]
root = "/srv/pv state"
runroot = "/run/pv"
log_level = "warning"
log_format = "json"
[podvisor.api]
grpc_max_recv_msg_size = 1
request_timeout = 0.001
[podvisor.runtime]
cgroup_manager = "systemd"
conmon_cgroup = "system.slice"
default_runtime = "kata-fc"
[podvisor.runtime.runtimes.kata-fc]
runtime_path = "/opt/kata/bin/kata-runtime"
[podvisor.image]
pause_image = "reg.example:5000/pause:3.9 \"quoted\" back\\slash tab\t bell\u0007 é"
pinned_images = ["a", "registry.k8s.io/pause:*"]
pull_progress_timeout = 1e10
[podvisor.network]
plugin_dirs = []
[podvisor.metrics]
enable_metrics = false
metrics_port = 0
[podvisor.workers]
image = 64
backoff_base = 0.1
backoff_cap = 0.1
startsecs = 0
''')


def test_a_zero_pull_progress_timeout_turns_the_check_off(tmp_path: Path) -> None:
    # CRI-O's meaning of 0; a negative value is still refused.
    loaded = load_text(tmp_path, "[podvisor.image]\npull_progress_timeout = 0\n")
    assert loaded.image.pull_progress_timeout == 0
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "[podvisor.image]\npull_progress_timeout = -1\n")
    assert "podvisor.image.pull_progress_timeout" in str(err.value)


def test_dump_then_load_gives_an_equal_config(tmp_path: Path, dropin_dir: Path) -> None:
    original = unusual_config(tmp_path)
    assert original != Config()
    dumped = write(tmp_path / "dumped.toml", config.dump(original))
    assert config.load(dumped, str(dropin_dir), {}) == original


def test_dump_of_defaults_round_trips(tmp_path: Path, dropin_dir: Path) -> None:
    dumped = write(tmp_path / "dumped.toml", config.dump(Config()))
    assert config.load(dumped, str(dropin_dir), {}) == Config()


def test_to_dict_is_json_and_from_dict_rebuilds(tmp_path: Path) -> None:
    original = unusual_config(tmp_path)
    plain = json.loads(json.dumps(config.to_dict(original)))
    assert plain["runtime"]["runtimes"]["kata-fc"]["runtime_root"] == "/run/pv/kata-fc"
    assert plain["workers"]["image"] == 64
    assert config.from_dict(plain) == original


def test_from_dict_validates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^worker settings: podvisor\.workers\.net: "):
        config.from_dict({"workers": {"net": 0}}, source="worker settings")


@given(st.text())
def test_any_string_survives_dump(text: str) -> None:
    original = Config(image=config.ImageConfig(pause_image=text, pinned_images=(text or "x",)))
    tree = tomllib.loads(config.dump(original))
    assert config.from_dict(tree["podvisor"]) == original


@pytest.mark.parametrize(("name", "level"), [
    ("fatal", logging.CRITICAL), ("panic", logging.CRITICAL), ("error", logging.ERROR),
    ("warn", logging.WARNING), ("warning", logging.WARNING), ("info", logging.INFO),
    ("debug", logging.DEBUG), ("trace", config.TRACE_LEVEL),
])
def test_python_log_level(name: str, level: int) -> None:
    assert config.python_log_level(name) == level


def test_every_log_level_maps() -> None:
    assert all(config.python_log_level(name) <= logging.CRITICAL for name in config.LOG_LEVELS)
    with pytest.raises(ValueError):
        config.python_log_level("verbose")


def test_all_metric_groups_and_a_subset_keep_their_order(tmp_path: Path) -> None:
    every = load_text(tmp_path, "[podvisor.stats]\nincluded_pod_metrics = ['all']\n")
    assert every.stats.included_pod_metrics == load_text(tmp_path, "").stats.included_pod_metrics
    some = load_text(tmp_path, "[podvisor.stats]\nincluded_pod_metrics = ['memory', 'cpu', "
                               "'memory']\n")
    assert some.stats.included_pod_metrics == ("memory", "cpu")
    none = load_text(tmp_path, "[podvisor.stats]\nincluded_pod_metrics = []\n")
    assert none.stats.included_pod_metrics == ()
