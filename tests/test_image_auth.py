"""Auth logic without a network: challenges, CRI credentials, token requests."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from podvisor.proto import api_pb2 as api
from podvisor.proto.errors import InvalidArgument
from podvisor.workers.image import auth
from podvisor.workers.image.auth import Challenge, Credentials


def test_parse_bearer_challenge_with_quoted_params() -> None:
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/busybox:pull",error="insufficient_scope"')
    [challenge] = auth.parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.docker.io/token",
                                "service": "registry.docker.io",
                                "scope": "repository:library/busybox:pull",
                                "error": "insufficient_scope"}


def test_parse_several_challenges_and_escapes() -> None:
    header = 'Basic realm="a \\"quoted\\" realm", Bearer realm=https://x/t, service=s'
    challenges = auth.parse_challenges(header)
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params["realm"] == 'a "quoted" realm'
    assert challenges[1].params == {"realm": "https://x/t", "service": "s"}


def test_cri_auth_field_is_base64_user_colon_password() -> None:
    encoded = base64.b64encode(b"alice:s3:cret").decode()
    creds = auth.credentials_from_cri(api.AuthConfig(auth=encoded))
    assert creds == Credentials(username="alice", password="s3:cret")


def test_cri_auth_explicit_fields_and_empty() -> None:
    assert auth.credentials_from_cri(api.AuthConfig()) is None
    assert auth.credentials_from_cri(api.AuthConfig(server_address="r.io")) is None
    creds = auth.credentials_from_cri(api.AuthConfig(username="u", password="p",
                                                     server_address="https://r.io/v1/"))
    assert creds is not None and creds.matches_host("r.io") and not creds.matches_host("m.io")
    hub = auth.credentials_from_cri(api.AuthConfig(
        registry_token="t", server_address="https://index.docker.io/v1/"))
    assert hub is not None and hub.matches_host("docker.io")


def test_cri_auth_rejects_garbage() -> None:
    with pytest.raises(InvalidArgument, match="base64"):
        auth.credentials_from_cri(api.AuthConfig(auth="!!!"))
    with pytest.raises(InvalidArgument, match="username:password"):
        auth.credentials_from_cri(api.AuthConfig(auth=base64.b64encode(b"nocolon").decode()))


def test_describe_never_shows_secrets() -> None:
    creds = Credentials(username="bob", password="hunter2")
    assert "hunter2" not in creds.describe()
    assert "hunter2" not in repr(creds.describe())


def test_token_request_with_basic_credentials() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.io/token?x=1", "service": "reg"})
    request = auth.token_request(challenge, "repository:a/b:pull",
                                 Credentials(username="u", password="p"))
    assert request.method == "GET"
    parts = urlsplit(request.url)
    assert parse_qs(parts.query) == {"x": ["1"], "service": ["reg"],
                                     "scope": ["repository:a/b:pull"]}
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


def test_token_request_anonymous_and_identity_token() -> None:
    challenge = Challenge("bearer", {"realm": "https://auth.io/token", "service": "reg"})
    anonymous = auth.token_request(challenge, "repository:a:pull", None)
    assert "Authorization" not in anonymous.headers
    oauth = auth.token_request(challenge, "repository:a:pull",
                               Credentials(identity_token="refresh"))
    assert oauth.method == "POST"
    assert oauth.body is not None
    form = parse_qs(oauth.body.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["refresh"]
    assert form["service"] == ["reg"]


def test_token_request_needs_an_http_realm() -> None:
    with pytest.raises(ValueError, match="realm"):
        auth.token_request(Challenge("bearer", {"realm": "file:///etc/passwd"}), "s", None)


def test_token_response_forms() -> None:
    assert auth.parse_token_response(b'{"token": "a"}').value == "a"
    token = auth.parse_token_response(json.dumps({"access_token": "b",
                                                  "expires_in": 3600}).encode())
    assert token.value == "b" and token.fresh()
    assert not auth.parse_token_response(b'{"token": "c", "expires_in": 1}').fresh()
    with pytest.raises(ValueError, match="no token"):
        auth.parse_token_response(b'{"nothing": 1}')
