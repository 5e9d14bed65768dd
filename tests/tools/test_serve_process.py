"""tools/serve_process.py's config helpers (starting `serve run` is the system tier's)."""

from __future__ import annotations

import copy

import pytest

from tools.serve_process import (
    ServeError,
    load_config,
    model_user_config,
    on_loopback,
    set_path,
)


def test_on_loopback_serves_on_one_port_and_leaves_the_base_alone() -> None:
    base = load_config()
    before = copy.deepcopy(base)
    config = on_loopback(base, 8123)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert base == before


def test_set_path_finds_list_items_by_name_or_index() -> None:
    config = load_config()
    set_path(config, "applications.vision.deployments.Model.num_replicas", 2)
    set_path(config, "applications.0.args.decode_threads", 1)
    app = config["applications"][0]
    assert {d["name"]: d.get("num_replicas") for d in app["deployments"]}["Model"] == 2
    assert app["args"]["decode_threads"] == 1
    with pytest.raises(ServeError, match="no list item named 'model'"):
        set_path(config, "applications.vision.deployments.model.num_replicas", 2)
    with pytest.raises(ServeError, match="ends at a list"):
        set_path(config, "applications.vision.deployments.Model", {})


def test_model_user_config_is_the_config_s_and_a_key_left_out_is_named() -> None:
    config = load_config()
    served = model_user_config(config)
    set_path(config, "applications.vision.deployments.Model.user_config.max_batch_size", 2)
    assert model_user_config(config) == {**served, "max_batch_size": 2}
    set_path(config, "applications.vision.deployments.Model.user_config", {"max_batch_size": 2})
    with pytest.raises(ValueError, match="batch_wait_timeout_s"):
        model_user_config(config)
