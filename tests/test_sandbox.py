"""Which files the sandbox treats as secrets, named by the runner's environment."""

from __future__ import annotations

from runner.sandbox import HIDE_VARIABLE, secret_paths


def test_secret_files_are_named_by_variables_and_certificate_authorities_are_not(tmp_path):
    files = {name: tmp_path / name for name in ("key.pem", "adc.json", "client.key", "ca.crt")}
    for path in files.values():
        path.write_text("x")
    (tmp_path / "home" / ".config" / "gcloud").mkdir(parents=True)
    environ = {
        "GITHUB_APP_PRIVATE_KEY_FILE": str(files["key.pem"]),
        "GOOGLE_APPLICATION_CREDENTIALS": str(files["adc.json"]),
        "CLIENT_CERT_KEY_FILE": str(files["client.key"]),
        "SSL_CERT_FILE": str(files["ca.crt"]),
        "NIX_SSL_CERT_FILE": str(files["ca.crt"]),
        "MISSING_FILE": str(tmp_path / "absent"),
        "RELATIVE_FILE": "relative/key.pem",
        HIDE_VARIABLE: f"{tmp_path / 'home'}",
        "HOME": str(tmp_path / "home"),
    }
    assert secret_paths(environ) == sorted(
        [
            files["key.pem"],
            files["adc.json"],
            files["client.key"],
            tmp_path / "home",
            tmp_path / "home" / ".config" / "gcloud",
        ]
    )
