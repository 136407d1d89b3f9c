"""EHR pull against a real FHIR server: the Medplum engine with Bulk Data and SMART around it.

The server (tests/ehr_server/server.mjs) is started once per session on 127.0.0.1; each test resets
it and injects the failure it is about through /__control, so every failure case is deterministic.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from trialbridge.cli import main
from trialbridge.ehr.auth import AuthSettings, SmartBackendAuth
from trialbridge.ehr.bulk import PollLimits, poll
from trialbridge.ehr.client import FhirClient, RetryPolicy, parse_retry_after
from trialbridge.ehr.files import STATE_NAME, Progress

# what the seed (tests/ehr_server/seed.bundle.json) holds for Group/grp-1 = Patient p1 and p2
GROUP_COUNTS = {"Condition": 2, "Observation": 16, "Patient": 2, "ResearchSubject": 2}
FAST = ["--backoff", "0.05", "--poll-interval", "0.1"]
REPORT = ".trialbridge-pull-report.json"

if TYPE_CHECKING:
    from ehr_server.fixtures import EhrServer

# the server fixtures (ehr, ehr_server_process); tests/conftest.py is not ours to extend
pytest_plugins = ("ehr_server.fixtures",)


def pull(server: EhrServer, *args: str) -> int:
    return main(["pull", "--server", server.base, *FAST, *args])


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def counts(folder: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in folder.glob("*.ndjson"):
        for r in lines(f):
            out[r["resourceType"]] = out.get(r["resourceType"], 0) + 1
    return dict(sorted(out.items()))


@cache
def _key(alg: str) -> Any:
    if alg == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


def smart_config(server: EhrServer, folder: Path, *, alg: str = "RS384", client_id: str = "tb-test",
                 register_key: Any = None) -> Path:
    """Register a client's public key (JWKS) on the server; write its auth config file."""
    key = _key(alg)
    public = (register_key or key).public_key()
    jwk = (RSAAlgorithm if alg == "RS384" else ECAlgorithm).to_jwk(public, as_dict=True)
    jwk.update(kid="key-1", alg=alg, use="sig")
    server.register_client(client_id, {"keys": [jwk]})
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "client.pem").write_bytes(pem)
    config = folder / "auth.yaml"
    config.write_text(f"client_id: {client_id}\nprivate_key_file: client.pem\nkid: key-1\n"
                      f"alg: {alg}\n", encoding="utf-8")
    return config


# ------------------------------------------------------------------ search
def test_search_follows_next_links_to_the_last_page(ehr: EhrServer, tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert pull(ehr, "--search", "Observation?subject=Patient/p1&_count=3", "-o", str(out)) == 0
    got = lines(out / "Observation.ndjson")
    assert len(got) == 8 and len({r["id"] for r in got}) == 8
    assert all(r["subject"]["reference"] == "Patient/p1" for r in got)
    pages = ehr.requests("/fhir/Observation", "GET")
    assert len(pages) == 3                                     # 3 + 3 + 2
    assert [("_offset=" in p["path"]) for p in pages] == [False, True, True]
    assert all(p["accept"] == "application/fhir+json" for p in pages)


def test_search_writes_one_file_per_type_with_includes(ehr: EhrServer, tmp_path: Path) -> None:
    out = tmp_path / "s"
    query = "ResearchSubject?study=ResearchStudy/rs-1&_include=ResearchSubject:individual&_count=1"
    assert pull(ehr, "--search", query, "-o", str(out)) == 0
    assert counts(out) == {"Patient": 2, "ResearchSubject": 2}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["Patient.ndjson", "ResearchSubject.ndjson", REPORT])


def test_research_study_pulls_subjects_and_what_they_reference(ehr: EhrServer,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "study"
    assert pull(ehr, "--research-study", "rs-1", "-o", str(out)) == 0
    assert counts(out) == {**GROUP_COUNTS, "ResearchStudy": 1}
    # p3 is in another study: none of its data came along
    assert not any("p3" in orjson.dumps(r).decode() for f in out.glob("*.ndjson") for r in lines(f))


# ------------------------------------------------------------------ bulk export
def test_group_export_follows_the_bulk_data_ig(ehr: EhrServer, tmp_path: Path) -> None:
    ehr.config(retryAfter=1, pollsBeforeDone=1, fileMaxResources=5)
    out = tmp_path / "export"
    started = time.monotonic()
    assert pull(ehr, "--group", "grp-1", "-o", str(out)) == 0
    assert time.monotonic() - started >= 1.0                   # Retry-After: 1 was honoured
    assert counts(out) == GROUP_COUNTS
    assert sorted(p.name for p in out.glob("Observation.*")) == [
        "Observation.001.ndjson", "Observation.002.ndjson", "Observation.003.ndjson",
        "Observation.004.ndjson"]
    (kick,) = ehr.requests("$export")
    assert kick["path"] == "/fhir/Group/grp-1/$export"
    assert kick["accept"] == "application/fhir+json" and kick["prefer"] == "respond-async"
    assert len(ehr.requests("/__status/", "GET")) == 2         # one 202, then the manifest
    assert all(r["accept"] == "application/fhir+ndjson" for r in ehr.requests("/__files/"))
    state = orjson.loads((out / STATE_NAME).read_bytes())
    assert state["manifest"]["requiresAccessToken"] is False
    assert {e["count"] for e in state["files"].values()} >= {1, 2, 5}
    assert len(ehr.state()["deletedJobs"]) == 1                # done: the server may drop the files
    seen = len(ehr.state()["requests"])
    assert pull(ehr, "--group", "grp-1", "-o", str(out)) == 0  # a re-run finds everything complete
    assert len(ehr.state()["requests"]) == seen and counts(out) == GROUP_COUNTS


def test_export_type_and_since_parameters(ehr: EhrServer, tmp_path: Path) -> None:
    assert pull(ehr, "--group", "grp-1", "--type", "Patient,Observation",
                "--since", "2000-01-01T00:00:00Z", "-o", str(tmp_path / "a")) == 0
    assert counts(tmp_path / "a") == {"Observation": 16, "Patient": 2}
    (kick,) = ehr.requests("$export")
    assert kick["path"] == ("/fhir/Group/grp-1/$export?_type=Patient,Observation"
                            "&_since=2000-01-01T00:00:00Z")
    assert pull(ehr, "--patients", "--type", "Patient", "--since", "2999-01-01T00:00:00Z",
                "-o", str(tmp_path / "b")) == 0
    assert counts(tmp_path / "b") == {}
    assert ehr.requests("$export")[-1]["path"].startswith("/fhir/Patient/$export?_type=Patient")


def test_interrupted_download_resumes_with_range_on_rerun(ehr: EhrServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    ehr.fault("drop_mid_body", match="Observation-1")
    assert pull(ehr, "--group", "grp-1", "--retries", "0", "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert "connection dropped" in err and "run the same command again to resume" in err
    partial = out / ".Observation.001.ndjson.part"
    kept = partial.stat().st_size
    assert kept > 0 and not (out / "Observation.001.ndjson").exists()
    before = len(ehr.requests("/__files/"))

    assert pull(ehr, "--group", "grp-1", "-o", str(out)) == 0
    assert counts(out) == GROUP_COUNTS and not partial.exists()
    again = ehr.requests("/__files/")[before:]
    # the complete file is skipped, the partial one resumed, the rest fetched whole
    assert [(r["path"].rsplit("/", 1)[1], r["range"]) for r in again] == [
        ("Observation-1.ndjson", f"bytes={kept}-"), ("Patient-1.ndjson", None),
        ("ResearchSubject-1.ndjson", None)]
    assert len(ehr.requests("$export")) == 1                    # the same export, no new kick-off
    assert "(resumed)" in capsys.readouterr().err


def test_dropped_connection_without_range_support_restarts_the_file(ehr: EhrServer,
                                                                    tmp_path: Path) -> None:
    ehr.config(rangeSupport=False)
    ehr.fault("drop_mid_body", match="Observation-1")
    out = tmp_path / "export"
    assert pull(ehr, "--group", "grp-1", "-o", str(out)) == 0  # retried within the run
    assert counts(out) == GROUP_COUNTS
    obs = ehr.requests("Observation-1")
    assert len(obs) == 2 and obs[1]["range"] is not None       # asked to resume, got it all again
    state = orjson.loads((out / STATE_NAME).read_bytes())
    assert state["files"]["Observation.001.ndjson"]["count"] == 16


def test_429_with_retry_after_is_honoured(ehr: EhrServer, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    ehr.fault("status", status=429, retryAfter=1, match="/fhir/Observation")
    ehr.fault("status", status=503, retryAfter=1, match="/__status/")
    started = time.monotonic()
    assert pull(ehr, "--search", "Observation?subject=Patient/p2", "-o", str(tmp_path / "s")) == 0
    assert time.monotonic() - started >= 1.0
    assert len(ehr.requests("/fhir/Observation")) == 2
    assert "HTTP 429; retrying in 1.0 s" in caplog.text
    assert pull(ehr, "--group", "grp-1", "-o", str(tmp_path / "e")) == 0
    assert "HTTP 503; retrying in 1.0 s" in caplog.text
    assert counts(tmp_path / "e") == GROUP_COUNTS
    ehr.fault("drop", match="/fhir/Patient", count=2)             # no answer at all, twice
    assert pull(ehr, "--search", "Patient?_id=p1", "-o", str(tmp_path / "d")) == 0
    assert "GET http://127.0.0.1:" in caplog.text and "/fhir/Patient: connection dropped; " \
        "retrying in" in caplog.text
    assert len(ehr.requests("/fhir/Patient")) == 3 and counts(tmp_path / "d") == {"Patient": 1}


def test_server_error_file_is_downloaded_and_reported(ehr: EhrServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ehr.config(errorFile=True)
    out = tmp_path / "export"
    assert pull(ehr, "--group", "grp-1", "-o", str(out)) == 0
    error_file = out / "errors" / "OperationOutcome.001.ndjson"
    assert lines(error_file)[0]["resourceType"] == "OperationOutcome"
    assert "missing: 1" in capsys.readouterr().out
    report = orjson.loads((out / REPORT).read_bytes())
    (issue,) = [i for i in report["issues"] if i["rule"] == "bulk-error-file"]
    assert issue["file"] == str(error_file) and "value" not in issue   # diagnostics: opt-in only
    assert str(error_file) in report["outputs"]
    ehr.config(errorFile=True)
    assert pull(ehr, "--group", "grp-1", "--strict", "--restart", "-o", str(tmp_path / "x")) == 1


def test_export_that_never_finishes_is_cancelled(ehr: EhrServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ehr.config(neverFinish=True, retryAfter=1)
    started = time.monotonic()
    assert pull(ehr, "--group", "grp-1", "--max-wait", "2.5", "-o", str(tmp_path / "e")) == 1
    assert time.monotonic() - started < 8
    err = capsys.readouterr().err
    assert "the export did not finish within --max-wait 2.5 s (last progress: 10% complete); " \
           "it was cancelled on the server" in err
    assert len(ehr.requests("/__status/", "DELETE")) == 1 and len(ehr.state()["deletedJobs"]) == 1
    assert 2 <= len(ehr.requests("/__status/", "GET")) <= 4


def test_ctrl_c_while_polling_cancels_the_export(ehr: EhrServer) -> None:
    ehr.config(neverFinish=True)
    with FhirClient(ehr.base) as client:
        resp = client.request("GET", f"{ehr.base}/$export",
                              headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
        status_url = resp.headers["Content-Location"]

        def interrupted(_: float) -> None:
            raise KeyboardInterrupt

        client.sleep = interrupted
        with pytest.raises(KeyboardInterrupt):
            poll(client, status_url, PollLimits(), Progress(quiet=True))
    assert ehr.requests("/__status/", "DELETE")[0]["path"] == status_url.removeprefix(ehr.origin)


# ------------------------------------------------------------------ authentication
def test_smart_backend_services_export_refreshes_an_expired_token(ehr: EhrServer,
                                                                  tmp_path: Path) -> None:
    ehr.config(auth="required")
    config = smart_config(ehr, tmp_path / "creds")
    ehr.fault("expire_token", match="/__files/")
    out = tmp_path / "export"
    assert pull(ehr, "--group", "grp-1", "--auth-config", str(config), "-o", str(out)) == 0
    assert counts(out) == GROUP_COUNTS
    tokens = ehr.state()["tokenRequests"]
    assert [t["ok"] for t in tokens] == [True, True]           # the 401 cost one refresh
    assert tokens[0]["scope"] == "system/*.rs" and tokens[0]["alg"] == "RS384"
    assert all(r["auth"] for r in ehr.requests("/fhir/") if ".well-known" not in r["path"])


def test_smart_es384_with_v1_scopes_and_proactive_refresh(ehr: EhrServer, tmp_path: Path) -> None:
    ehr.config(auth="required", v2Scopes=False, tokenLifetime=1)
    config = smart_config(ehr, tmp_path / "creds", alg="ES384", client_id="tb-es")
    assert pull(ehr, "--search", "Patient?_id=p1", "--auth-config", str(config),
                "-o", str(tmp_path / "s")) == 0
    (tok,) = ehr.state()["tokenRequests"]
    assert tok["scope"] == "system/*.read" and tok["alg"] == "ES384"
    # a token past its expiry is replaced before use, not after a 401
    settings = AuthSettings(method="smart", client_id="tb-es", private_key_file=tmp_path / "creds" /
                            "client.pem", kid="key-1", alg="ES384")
    with FhirClient(ehr.base) as client:
        auth = SmartBackendAuth(settings, client)
        client.auth = auth
        client.get_json("Patient?_id=p1")
        time.sleep(1.1)
        client.get_json("Patient?_id=p2")
        assert auth.tokens_fetched == 2
    assert len(ehr.state()["tokenRequests"]) == 3


def test_smart_with_a_given_token_url_and_scope_in_a_json_config(ehr: EhrServer,
                                                                 tmp_path: Path) -> None:
    ehr.config(auth="required")
    smart_config(ehr, tmp_path / "creds", client_id="tb-json")
    config = tmp_path / "creds" / "auth.json"
    config.write_bytes(orjson.dumps({"client_id": "tb-json", "private_key_file": "client.pem",
                                     "kid": "key-1", "alg": "RS384", "token_url": ehr.token_url,
                                     "scope": "system/Patient.rs system/Observation.rs"}))
    assert pull(ehr, "--search", "Patient?_id=p3", "--auth-config", str(config),
                "-o", str(tmp_path / "s")) == 0
    assert counts(tmp_path / "s") == {"Patient": 1}
    assert ehr.state()["tokenRequests"][0]["scope"] == "system/Patient.rs system/Observation.rs"
    assert not ehr.requests(".well-known")                      # nothing to discover


def test_smart_assertion_signed_with_the_wrong_key_is_refused(ehr: EhrServer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    ehr.config(auth="required")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = smart_config(ehr, tmp_path / "creds", client_id="tb-wrong", register_key=other)
    assert pull(ehr, "--search", "Patient", "--auth-config", str(config),
                "-o", str(tmp_path / "s")) == 1
    assert ("token endpoint http://127.0.0.1:" in (err := capsys.readouterr().err)
            and "/auth/token refused client 'tb-wrong': HTTP 401 invalid_client" in err)
    assert ehr.state()["tokenRequests"][0]["error"] == "signature verification failed"


def test_bearer_token_from_the_environment(ehr: EhrServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ehr.config(auth="required", bearerTokens=["static-token-123"])
    out = tmp_path / "s"
    assert pull(ehr, "--search", "Patient?_id=p1,p2", "-o", str(out)) == 1   # no credentials
    assert "HTTP 401 missing or expired access token" in capsys.readouterr().err
    monkeypatch.setenv("TRIALBRIDGE_BEARER_TOKEN", "static-token-123")
    assert pull(ehr, "--search", "Patient?_id=p1,p2", "-o", str(out)) == 0
    assert counts(out) == {"Patient": 2}
    ehr.fault("expire_token")
    assert pull(ehr, "--search", "Patient?_id=p1", "-o", str(out)) == 1
    assert "the server refused the bearer token (HTTP 401); a static token cannot be refreshed" \
        in capsys.readouterr().err


@pytest.mark.parametrize("files_need_token", [False, True])
def test_file_requests_carry_the_token_only_when_required(ehr: EhrServer, tmp_path: Path,
                                                          files_need_token: bool) -> None:
    ehr.config(auth="required", filesRequireToken=files_need_token)
    config = smart_config(ehr, tmp_path / "creds")
    assert pull(ehr, "--group", "grp-1", "--auth-config", str(config), "-o", str(tmp_path / "e")) == 0
    files = ehr.requests("/__files/")
    assert files and all(r["auth"] is files_need_token for r in files)
    assert all(r["auth"] for r in ehr.requests("/__status/"))


def test_no_secret_in_any_output(ehr: EhrServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)                  # httpx and httpcore debug logs included
    ehr.config(auth="required", bearerTokens=["s3cr3t-bearer-value"], errorFile=True)
    config = smart_config(ehr, tmp_path / "creds")
    ehr.fault("expire_token", match="/__status/")
    ehr.fault("status", status=429, retryAfter=0, match="/__files/")
    assert pull(ehr, "--group", "grp-1", "--auth-config", str(config), "-o", str(tmp_path / "a")) == 0
    monkeypatch.setenv("TRIALBRIDGE_BEARER_TOKEN", "s3cr3t-bearer-value")
    assert pull(ehr, "--search", "Patient?_count=1", "-o", str(tmp_path / "b")) == 0
    ehr.fault("expire_token")
    assert pull(ehr, "--search", "Patient", "-o", str(tmp_path / "c")) == 1
    (tmp_path / "bad.yaml").write_text("bearer_token: s3cr3t-bearer-value\n  oops: [", "utf-8")
    assert pull(ehr, "--search", "Patient", "--auth-config", str(tmp_path / "bad.yaml"),
                "-o", str(tmp_path / "d")) == 2

    issued = [t["token"] for t in ehr.state()["tokenRequests"] if t.get("token")]
    assert len(issued) == 2
    key_lines = [ln for ln in (tmp_path / "creds" / "client.pem").read_text().splitlines()
                 if "PRIVATE KEY" not in ln]
    secrets = ["s3cr3t-bearer-value", *issued, *key_lines]
    captured = capsys.readouterr()
    written = [p.read_text("utf-8", "replace") for d in "abcd" if (tmp_path / d).exists()
               for p in (tmp_path / d).rglob("*") if p.is_file()]
    for text in [captured.out, captured.err, caplog.text, *written]:
        for secret in secrets:
            assert secret not in text
    assert "Authorization" not in caplog.text and "client_assertion=" not in caplog.text


# ------------------------------------------------------------------ usage and conversion
@pytest.mark.parametrize(("args", "message"), [
    (["--search", "Patient", "--group", "g1"],
     "--group, --patients and --since belong to a bulk export, not a search"),
    (["--since", "2024-01-01"],
     "--since '2024-01-01' is not a FHIR instant with a time zone (e.g. 2024-01-01T00:00:00Z)"),
    (["--type", "patient"], "--type 'patient' is not a FHIR resource type name"),
    (["--group", "../x"], "--group '../x' is not a FHIR id"),
])
def test_usage_errors(args: list[str], message: str, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pull", "--server", "http://127.0.0.1:9/fhir", "-o", str(tmp_path), *args])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"trialbridge: {message}"


def test_auth_config_with_unknown_key_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "auth.json"
    cfg.write_text('{"client_id": "x", "privatekey": "k.pem"}', "utf-8")
    code = main(["pull", "--server", "http://127.0.0.1:9/fhir", "--search", "Patient",
                 "--auth-config", str(cfg), "-o", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"trialbridge: {cfg}: unknown auth config key(s): privatekey (known: alg, bearer_token, "
        "bearer_token_file, client_id, kid, private_key_file, scope, token_url)")


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0     # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    policy = RetryPolicy(backoff=1.0, backoff_cap=8.0, retry_after_cap=30.0)
    assert policy.delay(1, 120.0) == 30.0
    assert all(0.5 <= policy.delay(1, None) <= 1.0 for _ in range(50))
    assert all(4.0 <= policy.delay(10, None) <= 8.0 for _ in range(50))


def test_pull_to_sdtm_converts_the_folder(ehr: EhrServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    args = ["--group", "grp-1", "-o", str(out), "--to", "sdtm", "--studyid", "TB01"]
    code = pull(ehr, *args)
    if importlib.util.find_spec("trialbridge.subject.pipeline") is None:
        assert code == 2
        assert "--to sdtm needs the subject-data converter" in capsys.readouterr().err
        return
    assert code in (0, 1)                            # the conversion's own verdict, passed through
    report = orjson.loads((out / "sdtm" / "report.json").read_bytes())
    assert report["inputs"] == [str(out)]
    assert (out / "sdtm" / "dm.json").exists()
    assert f"converting {out} to SDTM in {out / 'sdtm'}" in capsys.readouterr().out
    # the conversion options reach the converter: a test-code table with a non-CT term stops it (exit 2)
    bad = tmp_path / "codes.csv"
    bad.write_text("domain,loinc,testcd\nLB,5130-0,NOTATERM\n", encoding="utf-8")
    assert pull(ehr, *args, "--sdtm-output", str(tmp_path / "sdtm2"), "--test-codes", str(bad)) == 2
    assert "codes.csv: record row 1: field testcd" in capsys.readouterr().err
