//! `moat run --grant aws`, as root, against a real moto server (STS, S3)
//! behind TLS, reached by the real AWS host names through `MOAT_RESOLVE`:
//! the real aws CLI and boto3 inside the sandbox, both ways in
//! (credential_process and SigV4 re-signing), nft and eBPF redirects and env
//! mode. moto checks every SigV4 header signature (testkit/src/aws.rs), so a
//! request the proxy re-signed wrongly fails. Nothing tries the internet: the
//! sandbox reaches only its proxy, the proxy only the stand-in.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::process::Output;

use common::*;
use moat_testkit::TestCa;
use moat_testkit::aws::{Moto, ROLE_ARN, Seeded};

struct Setup {
    env: Env,
    moto: Moto,
    keys: Seeded,
    vars: Vec<(String, String)>,
    ws: std::path::PathBuf,
    _ca: TestCa,
}

fn setup(inject: &str) -> Setup {
    assert!(is_root(), "vm-tests run as root");
    let ca = TestCa::new().unwrap();
    let moto = Moto::start(&ca).unwrap();
    let keys = moto.seed().unwrap();
    let env = Env::new();
    let creds = moto.credentials_file(&keys.user).unwrap();
    let vars = vec![
        ("MOAT_RESOLVE".to_owned(), moto.moat_resolve()),
        (
            "MOAT_UPSTREAM_CA".into(),
            moto.ca_path().display().to_string(),
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            creds.display().to_string(),
        ),
        ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ("MOAT_KEY_BACKEND".into(), "file".into()),
    ];
    let out = env
        .cmd()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["grant", "aws", "--role", ROLE_ARN, "--region", "us-east-1"])
        .args(["--inject", inject])
        .output()
        .unwrap();
    ok(&out);
    let ws = env.dir.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    Setup {
        env,
        moto,
        keys,
        vars,
        ws,
        _ca: ca,
    }
}

impl Setup {
    /// `moat run --grant aws` with `redirect` (`nft`, `ebpf`, or `env`:
    /// env mode, where the helper and clients reach Moat through the proxy
    /// variables).
    fn run(&self, redirect: &str, command: &[&str]) -> Output {
        let how: &[&str] = match redirect {
            "env" => &["--network-mode", "env"],
            r => &["--redirect", r],
        };
        self.env
            .cmd()
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .args(["run", "--grant", "aws"])
            .args(how)
            .arg(&self.ws)
            .arg("--")
            .args(command)
            .output()
            .unwrap()
    }

    /// Every event of every run of this test.
    fn events(&self) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        for id in self.env.run_ids() {
            let path = self.env.home().join("runs").join(id).join("events.jsonl");
            for l in fs::read_to_string(path).unwrap().lines() {
                all.push(serde_json::from_str(l).unwrap());
            }
        }
        all
    }

    fn venv(&self, tool: &str) -> String {
        self.moto.bin(tool).display().to_string()
    }
}

/// boto3 inside: a 20 MiB object up (multipart: 3 parts of 8 MiB, each
/// aws-chunked with a trailer checksum) and down, the bytes compared.
const BOTO3: &str = r#"
import hashlib, os, sys, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3")
data = os.urandom(20 * 1024 * 1024)
path = os.path.join(os.environ["HOME"], "up.bin")
open(path, "wb").write(data)
cfg = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
s3.upload_file(path, "moat-test", "big.bin", Config=cfg)
s3.put_object(Bucket="moat-test", Key="small.txt", Body=b"hello")
got = s3.get_object(Bucket="moat-test", Key="big.bin")["Body"].read()
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), "bytes differ"
print("boto3 ok", len(got), s3.get_object(Bucket="moat-test", Key="small.txt")["Body"].read().decode())
"#;

fn check(s: &Setup, redirect: &str) {
    // The aws CLI: who am I? The assumed role, never the host's user.
    let out = s.run(
        redirect,
        &[
            &s.venv("aws"),
            "sts",
            "get-caller-identity",
            "--output",
            "json",
        ],
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{}\n{text}\nmoto:\n{}",
        stderr(&out),
        s.moto.log()
    );
    let who: serde_json::Value = serde_json::from_str(&text).unwrap();
    let arn = who["Arn"].as_str().unwrap();
    assert!(
        arn.starts_with("arn:aws:sts::123456789012:assumed-role/AgentRole/moat-"),
        "{arn}"
    );
    // boto3: 20 MiB each way.
    let out = s.run(redirect, &[&s.venv("python"), "-c", BOTO3]);
    assert!(
        out.status.success(),
        "{}\n{}\nmoto:\n{}",
        stderr(&out),
        stdout(&out),
        s.moto
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(stdout(&out).trim(), "boto3 ok 20971520 hello");
}

#[test]
fn credential_process_serves_the_role_to_the_aws_cli_and_boto3() {
    let s = setup("credential-process");
    for redirect in ["nft", "ebpf", "env"] {
        check(&s, redirect);
    }
    // The profile runs Moat's helper; its temporary key is the only one
    // inside, and never the host's own.
    let out = s.run(
        "nft",
        &[
            "sh",
            "-c",
            "cat \"$AWS_CONFIG_FILE\"; env | grep ^AWS_ | sort",
        ],
    );
    let text = stdout(ok(&out));
    assert!(text.contains("credential_process = "), "{text}");
    assert!(text.contains("__aws-credentials aws "), "{text}");
    assert!(text.contains("AWS_REGION=us-east-1"), "{text}");
    assert!(
        !text.contains(&s.keys.user.id) && !text.contains(&s.keys.user.secret),
        "{text}"
    );
    // Without the run's token the helper's endpoint refuses.
    let out = s.run(
        "nft",
        &[
            &s.venv("python"),
            "-c",
            "import urllib.request as u\ntry:\n u.urlopen('http://moat.internal/aws/credentials/aws')\nexcept Exception as e: print(e.code)",
        ],
    );
    assert_eq!(stdout(&out).trim(), "401", "{}", stderr(&out));
}

#[test]
fn sigv4_mode_re_signs_every_request_and_no_key_is_inside() {
    let s = setup("sigv4");
    for redirect in ["nft", "ebpf", "env"] {
        check(&s, redirect);
    }
    // Inside: placeholder keys only. Nothing the child can read names a
    // real key: not its env, not its files, not /proc.
    let out = s.run(
        "nft",
        &[
            "sh",
            "-c",
            "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; ls -a ~; cat ~/.aws/* 2>/dev/null; echo AWS_CONFIG_FILE=${AWS_CONFIG_FILE:-none}",
        ],
    );
    let text = stdout(ok(&out));
    assert!(text.contains("AWS_CONFIG_FILE=none"), "{text}");
    let placeholder = text
        .lines()
        .find_map(|l| l.strip_prefix("AWS_ACCESS_KEY_ID="))
        .unwrap()
        .to_owned();
    assert!(
        placeholder.starts_with("ASIA") && placeholder.len() == 20,
        "{placeholder}"
    );
    assert!(!text.contains(&s.keys.user.id) && !text.contains(&s.keys.user.secret));
    // The real temporary keys the proxy signed with (their ids are in the
    // runs' events: not secret, AWS logs them too) never reached the child.
    let real: Vec<String> = s
        .events()
        .iter()
        .filter(|e| e["event"] == "aws_credentials")
        .map(|e| e["access_key_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!real.is_empty());
    for key in &real {
        assert!(key.starts_with("ASIA") && *key != placeholder, "{key}");
        assert!(!text.contains(key.as_str()), "{key} is inside:\n{text}");
    }
    assert!(
        text.lines()
            .filter_map(|l| l.strip_prefix("AWS_SESSION_TOKEN="))
            .all(|t| t.starts_with("moat-placeholder-")),
        "{text}"
    );
    // The placeholder itself is worth nothing at AWS: moto refuses it
    // when it arrives unsigned by Moat (a request to a host Moat does not
    // re-sign for is not possible here, so ask moto directly).
    let creds = s.env.dir.path().join("placeholder-creds");
    fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {placeholder}\naws_secret_access_key = x\n"),
    )
    .unwrap();
    let out = s
        .moto
        .client_command(s.moto.bin("aws"), &creds)
        .args(["sts", "get-caller-identity"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("InvalidClientTokenId"),
        "{}",
        stderr(&out)
    );
    // STS calls that would mint credentials for the sandbox are refused.
    let out = s.run(
        "nft",
        &[
            &s.venv("aws"),
            "sts",
            "assume-role",
            "--role-arn",
            ROLE_ARN,
            "--role-session-name",
            "escape",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Moat cannot re-sign this AWS request")
            && stderr(&out).contains("new credentials"),
        "{}",
        stderr(&out)
    );
}

/// A role session past its expiry is assumed again, and the SDK inside,
/// calling credential_process again as it must, never sees a failed call.
/// `MOAT_AWS_REFRESH_MARGIN=899s` on 900-second sessions makes each
/// session stale for Moat a second after it was issued (so the next ask is
/// a fresh AssumeRole); botocore refreshes credentials that expire within
/// 15 minutes, so every call asks.
#[test]
fn credential_process_refreshes_a_session_past_expiry_without_a_failed_call() {
    let mut s = setup("credential-process");
    s.vars
        .push(("MOAT_AWS_REFRESH_MARGIN".into(), "899s".into()));
    let script = r#"
import time, boto3
s = boto3.Session()
sts = s.client("sts")
keys = []
for _ in range(4):
    sts.get_caller_identity()
    keys.append(s.get_credentials().get_frozen_credentials().access_key)
    time.sleep(1.2)
print(len(set(keys)))
"#;
    let out = s.run("nft", &[&s.venv("python"), "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let distinct: usize = stdout(&out).trim().parse().unwrap();
    assert!(
        distinct >= 3,
        "the session was not refreshed: {}",
        stdout(&out)
    );
    // Each refresh was an AssumeRole by the proxy, recorded by name.
    let issued = s
        .events()
        .iter()
        .filter(|e| e["event"] == "aws_credentials")
        .count();
    assert!(issued >= distinct, "{issued} < {distinct}");
}
