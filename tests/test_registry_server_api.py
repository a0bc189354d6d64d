"""The registry's discovery and curation API against a real server (issue 12 §1): search with
text, extension point, permission, host and ABI filters, sorts and bounded pagination; yanks;
security advisories; ratings and reviews with moderation; security review status with a
verified reviewer signature; rate limits on writes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plugbox.trust._signing import SecretKey, sign_bytes
from tests.test_registry_server import (
    running_registry,
    TEST_LIMITS,
    Reg,
    Server,
    auth,
    echo_dir,
    error_of,
    init_registry_cli,
    make_package,
)

__all__ = ["echo_dir"]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reg]:
    with running_registry(tmp_path_factory.mktemp("registry-api") / "reg") as running:
        yield running


@pytest.fixture(scope="module")
def catalogue(reg: Reg, echo_dir: Path) -> dict[str, str]:
    """Four plugins with distinct descriptions, tags, points, permissions and host ranges;
    ``alpha`` has two versions, the newer one for hosts >=2."""
    key = SecretKey.generate()
    token = reg.account("cat", key=key)
    specs = [
        ("alpha", "0.1.0", "Counts words in text", "text,stats",
         dict(implements={"text.analyze": {"hook": "echo"}}, host=">=0.1,<1.0")),
        ("alpha", "0.2.0", "Counts words in text", "text,stats",
         dict(implements={"text.analyze": {"hook": "echo"}}, host=">=2.0")),
        ("beta", "1.0.0", "Stores notes", "storage",
         dict(permissions={"kv": {}}, host=">=0.1,<1.0")),
        ("gamma", "0.3.0", "Formats text nicely", "format",
         dict(implements={"text.format": {"hook": "echo"}}, permissions={"log": True},
              host=">=0.1")),
        ("delta", "2.0.0", "Nothing to see", "misc", dict(host=">=0.1")),
    ]
    for name, version, description, tags, extra in specs:
        r = reg.publish(token, make_package(echo_dir, key, name=name, version=version,
                                            description=description, **extra), tags=tags)
        assert r.status_code == 201, r.text
        time.sleep(0.01)  # distinct publish times for the recency sort
    return {"token": token, "key": key.key_id_hex}


def names(doc: dict[str, object]) -> list[str]:
    return [str(item["name"]) for item in doc["items"]]  # type: ignore[attr-defined,index]


def search(reg: Reg, **params: object) -> dict[str, object]:
    r = reg.http.get("/api/v1/plugins", params=params)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc


def test_search_text_and_filters(reg: Reg, catalogue: dict[str, str]) -> None:
    assert sorted(names(search(reg))) == ["alpha", "beta", "delta", "gamma"]
    assert names(search(reg, q="words")) == ["alpha"]          # description
    assert names(search(reg, q="STORAGE")) == ["beta"]         # tag, any case
    assert names(search(reg, q="gam")) == ["gamma"]            # name
    assert sorted(names(search(reg, q="text"))) == ["alpha", "gamma"]
    assert names(search(reg, q="text nicely")) == ["gamma"]    # every word
    assert names(search(reg, q="100%")) == []                  # LIKE wildcards are literal
    assert names(search(reg, point="text.analyze")) == ["alpha"]
    assert names(search(reg, permission="kv")) == ["beta"]
    assert sorted(names(search(reg, allowed_permissions="log"))) == ["alpha", "delta", "gamma"]
    # Host compatibility picks the newest version the host can run.
    doc = search(reg, q="words", host="0.5.0")
    assert doc["items"][0]["version"] == "0.1.0"  # type: ignore[index]
    doc = search(reg, q="words", host="2.1.0")
    assert doc["items"][0]["version"] == "0.2.0"  # type: ignore[index]
    assert sorted(names(search(reg, host="2.1.0"))) == ["alpha", "delta", "gamma"]
    # ABI: every sample is ABI 1.0, which a 1.x host runs and a 2.x host does not.
    assert len(names(search(reg, abi="1.1"))) == 4
    assert names(search(reg, abi="2.0")) == []


def test_search_sort_and_pagination(reg: Reg, catalogue: dict[str, str]) -> None:
    for _ in range(3):
        reg.http.get("/api/v1/plugins/beta/versions/1.0.0/download")
    reg.http.get("/api/v1/plugins/gamma/versions/0.3.0/download")
    assert names(search(reg, sort="downloads"))[:2] == ["beta", "gamma"]
    assert names(search(reg, sort="recent"))[0] == "delta"
    assert names(search(reg, sort="name")) == ["alpha", "beta", "delta", "gamma"]
    first = search(reg, sort="name", per_page=1, page=2)
    assert names(first) == ["beta"] and first["total"] == 4
    assert names(search(reg, sort="name", per_page=3, page=2)) == ["gamma"]
    for bad in ({"per_page": 1000}, {"page": 0}, {"sort": "random"}, {"q": "x" * 300},
                {"host": "not a version"}, {"abi": "one"}, {"per_page": "-1"}):
        r = reg.http.get("/api/v1/plugins", params=bad)  # type: ignore[arg-type]
        assert error_of(r) == (400, "invalid-request"), bad


def test_versions_show_manifest_permissions_signers_compatibility(
        reg: Reg, catalogue: dict[str, str]) -> None:
    doc = reg.http.get("/api/v1/plugins/alpha/versions").json()
    assert [v["version"] for v in doc["versions"]] == ["0.2.0", "0.1.0"]
    newest = doc["versions"][0]
    assert newest["compatibility"]["host"] == ">=2.0"
    assert newest["extension_points"] == ["text.analyze"]
    assert newest["signers"][0]["key_id"] == catalogue["key"]
    assert newest["manifest"]["implements"] == {"text.analyze": {"hook": "echo"}}
    beta = reg.http.get("/api/v1/plugins/beta/versions/1.0.0").json()
    assert beta["permissions"] == ["kv"]
    assert error_of(reg.http.get("/api/v1/plugins/beta/versions/9.9.9")) == (404, "not-found")
    assert error_of(reg.http.get("/api/v1/plugins/nope")) == (404, "not-found")
    assert error_of(reg.http.get("/api/v1/nothing-here")) == (404, "not-found")


def test_yank(reg: Reg, catalogue: dict[str, str], echo_dir: Path) -> None:
    token = catalogue["token"]
    other = reg.account("not-owner")
    url = "/api/v1/plugins/alpha/versions/0.2.0/yank"
    assert error_of(reg.http.post(url, headers=auth(other), json={"reason": "x"})) == \
        (403, "forbidden")
    assert error_of(reg.http.post(url, headers=auth(token), json={})) == \
        (400, "invalid-request")
    r = reg.http.post(url, headers=auth(token), json={"reason": "crashes on empty input"})
    assert r.status_code == 200 and r.json()["yanked"] is True
    assert r.json()["yank_reason"] == "crashes on empty input"
    assert reg.http.get("/api/v1/plugins/alpha").json()["latest"] == "0.1.0"
    assert names(search(reg, q="words", host="2.1.0")) == []
    # Still downloadable (exact pins), and the yank is signed into TUF.
    assert reg.http.get("/api/v1/plugins/alpha/versions/0.2.0/download").status_code == 200
    from plugbox.registry._tuf import TufRepository

    custom = TufRepository(reg.directory / "tuf").index()["plugins"]["alpha"]["versions"][
        "0.2.0"]["custom"]
    assert custom["yanked"] is True and custom["yank_reason"] == "crashes on empty input"
    # Restoring it.
    r = reg.http.post(url, headers=auth(token), json={"reason": "fixed", "yanked": False})
    assert r.json()["yanked"] is False
    assert reg.http.get("/api/v1/plugins/alpha").json()["latest"] == "0.2.0"


def test_advisories(reg: Reg, catalogue: dict[str, str]) -> None:
    token = catalogue["token"]
    stranger = reg.account("stranger")
    advisory = {"id": "PBX-2026-0001", "affected": "<1.0.1", "severity": "high",
                "fixed_in": "1.0.1", "text": "notes leak between plugins"}
    url = "/api/v1/plugins/beta/advisories"
    assert error_of(reg.http.post(url, headers=auth(stranger), json=advisory)) == \
        (403, "forbidden")
    for bad in ({"affected": "not a spec"}, {"severity": "urgent"}, {"id": "../x"},
                {"text": ""}):
        r = reg.http.post(url, headers=auth(token), json={**advisory, **bad})
        assert error_of(r) == (400, "invalid-request"), bad
    r = reg.http.post(url, headers=auth(token), json=advisory)
    assert r.status_code == 201 and r.json()["published_by"] == "cat"
    assert error_of(reg.http.post(url, headers=auth(token), json=advisory)) == \
        (409, "conflict")
    r = reg.http.post(url, headers=auth(reg.admin), json={**advisory, "id": "PBX-2026-0002",
                                                           "severity": "low"})
    assert r.status_code == 201
    listed = reg.http.get(url).json()["advisories"]
    assert [a["id"] for a in listed] == ["PBX-2026-0001", "PBX-2026-0002"]
    assert {a["id"] for a in reg.http.get("/api/v1/advisories").json()["advisories"]} >= \
        {"PBX-2026-0001", "PBX-2026-0002"}
    assert reg.http.get("/api/v1/plugins/beta").json()["advisories"][0]["fixed_in"] == "1.0.1"
    # The signed listing the client reads carries them.
    from plugbox.registry._tuf import TufRepository

    repo = TufRepository(reg.directory / "tuf")
    entry = repo.index()["plugins"]["beta"]
    info = repo._load("targets").signed.targets["listings/beta.json"]
    listing_file = repo.targets_dir / "listings" / f"{info.hashes['sha256']}.beta.json"
    doc = json.loads(listing_file.read_bytes())
    assert entry["listing"] == "listings/beta.json"
    assert [a["id"] for a in doc["advisories"]] == ["PBX-2026-0001", "PBX-2026-0002"]


def test_reviews_one_per_user_editable_moderated(reg: Reg, catalogue: dict[str, str]) -> None:
    bob, carol = reg.account("bob"), reg.account("carol")
    url = "/api/v1/plugins/gamma/reviews"
    assert error_of(reg.http.put(url, json={"rating": 5, "text": "x"}))[0] == 401
    for bad in (0, 6, "5", True, 2.5):
        r = reg.http.put(url, headers=auth(bob), json={"rating": bad, "text": "x"})
        assert error_of(r) == (400, "invalid-request"), bad
    assert reg.http.put(url, headers=auth(bob), json={"rating": 4, "text": "good"}).status_code \
        == 200
    r = reg.http.put(url, headers=auth(bob), json={"rating": 2, "text": "worse since 0.3"})
    assert r.json()["rating"] == 2 and r.json()["text"] == "worse since 0.3"
    reg.http.put(url, headers=auth(carol), json={"rating": 5, "text": "great"})
    doc = reg.http.get(url).json()
    assert len(doc["reviews"]) == 2 and doc["rating"] == 3.5 and doc["ratings"] == 2
    mod = "/api/v1/plugins/gamma/reviews/bob/moderation"
    assert error_of(reg.http.post(mod, headers=auth(carol), json={"hidden": True})) == \
        (403, "forbidden")
    r = reg.http.post(mod, headers=auth(reg.admin), json={"hidden": True, "reason": "spam"})
    assert r.json()["hidden"] is True
    doc = reg.http.get(url).json()
    assert [x["user"] for x in doc["reviews"]] == ["carol"] and doc["rating"] == 5.0
    admin_view = reg.http.get(url, headers=auth(reg.admin)).json()
    assert {x["user"] for x in admin_view["reviews"]} == {"bob", "carol"}
    assert names(search(reg, sort="rating"))[0] == "gamma"


def test_security_review_status(reg: Reg, catalogue: dict[str, str]) -> None:
    key, wrong = SecretKey.generate(), SecretKey.generate()
    reviewer = reg.account("sec-team", reviewer=True, key=key)
    plain = reg.account("plain-user", key=wrong)
    version = reg.http.get("/api/v1/plugins/delta/versions/2.0.0").json()
    sha = version["sha256"].encode()
    url = "/api/v1/plugins/delta/versions/2.0.0/security-reviews"
    good = sign_bytes(sha, key, trusted_comment="reviewed").to_text()
    assert error_of(reg.http.post(url, headers=auth(plain), json={
        "status": "approved", "signature": sign_bytes(sha, wrong, trusted_comment="x")
        .to_text()})) == (403, "forbidden")
    r = reg.http.post(url, headers=auth(reviewer), json={
        "status": "approved", "signature": sign_bytes(b"other", key, trusted_comment="x")
        .to_text()})
    assert error_of(r) == (422, "bad-signature")
    r = reg.http.post(url, headers=auth(reviewer), json={
        "status": "approved", "signature": sign_bytes(sha, wrong, trusted_comment="x")
        .to_text()})
    assert error_of(r) == (403, "untrusted-signer")
    r = reg.http.post(url, headers=auth(reviewer), json={"status": "approved",
                                                          "signature": good, "notes": "ok"})
    assert r.status_code == 201 and r.json()["verified"] is True
    reviews = reg.http.get("/api/v1/plugins/delta/versions/2.0.0").json()["security_reviews"]
    assert [(x["reviewer"], x["status"], x["key_id"]) for x in reviews] == \
        [("sec-team", "approved", key.key_id_hex)]
    # Anyone can check it: the reviewer's key is public.
    from plugbox.trust._signing import PublicKey, Signature, verify_bytes

    keys = reg.http.get("/api/v1/accounts/sec-team/keys").json()["keys"]
    verify_bytes(sha, Signature.parse(reviews[0]["signature"]),
                 PublicKey.parse(keys[0]["public_key"]))


def test_transfer_by_an_admin(reg: Reg, catalogue: dict[str, str], echo_dir: Path) -> None:
    key = SecretKey.generate()
    heir = reg.account("heir", key=key)
    url = "/api/v1/plugins/delta/transfer"
    assert error_of(reg.http.post(url, headers=auth(catalogue["token"]), json={"to": "heir"})) \
        == (403, "forbidden")
    assert error_of(reg.http.post(url, headers=auth(reg.admin), json={"to": "nobody"})) == \
        (404, "not-found")
    r = reg.http.post(url, headers=auth(reg.admin), json={"to": "heir"})
    assert r.status_code == 200 and r.json()["owner"] == "heir"
    r = reg.publish(heir, make_package(echo_dir, key, name="delta", version="2.1.0",
                                       host=">=0.1"))
    assert r.status_code == 201, r.text
    r = reg.publish(catalogue["token"], make_package(echo_dir, key, name="delta",
                                                     version="2.2.0"))
    assert error_of(r) == (403, "forbidden")
    assert reg.http.get("/api/v1/plugins/delta").json()["latest"] == "2.1.0"


def test_rate_limits_per_token_and_address(tmp_path: Path) -> None:
    from tests.test_registry_server import plugbox_cli

    directory = tmp_path / "reg"
    admin = init_registry_cli(directory, limits={**TEST_LIMITS, "write_burst": 3,
                                                 "writes_per_minute": 6.0})
    done = plugbox_cli("registry", "account", str(directory), "second", "--admin", "--json")
    second = json.loads(done.stdout)["token"]
    server = Server(directory)

    def client(address: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, timeout=10,
                            transport=httpx.HTTPTransport(local_address=address))

    try:
        with client("127.0.0.1") as http:
            codes = []
            for i in range(4):
                r = http.post("/api/v1/accounts", headers=auth(admin), json={"name": f"u{i}"})
                codes.append(r.status_code)
            assert codes == [201, 201, 201, 429]
            assert r.json()["error"]["code"] == "rate-limited"
            assert 1 <= int(r.headers["retry-after"]) <= 11
            # Reads are not limited.
            assert all(http.get("/api/v1/plugins").status_code == 200 for _ in range(10))
            # Another token from the same address: the address's bucket is empty.
            r = http.post("/api/v1/accounts", headers=auth(second), json={"name": "v1"})
            assert error_of(r) == (429, "rate-limited") and "address" in r.text
        with client("127.0.0.2") as other:
            # The first token from another address: the token's bucket is empty.
            r = other.post("/api/v1/accounts", headers=auth(admin), json={"name": "w1"})
            assert error_of(r) == (429, "rate-limited") and "token" in r.text
            # The second token from that address writes.
            r = other.post("/api/v1/accounts", headers=auth(second), json={"name": "w2"})
            assert r.status_code == 201, r.text
    finally:
        server.stop()
