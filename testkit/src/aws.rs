//! An AWS stand-in: a real moto server (`moto_server`, from the venv that
//! `scripts/setup.sh` builds) on 127.0.0.1, behind a TLS front with a
//! certificate from the test CA for the AWS host names in [`HOSTS`]. The
//! front relays bytes as they are, so moto sees the client's own `Host` and
//! dispatches on it. Nothing reaches beyond loopback: Moat gets the front
//! through `MOAT_RESOLVE` ([`Moto::moat_resolve`], CA [`Moto::ca_path`] in
//! `MOAT_UPSTREAM_CA`); a client on the host gets it through a local CONNECT
//! proxy that tunnels every name to the front ([`Moto::client_env`]).
//!
//! ```text
//! let moto = Moto::start(&ca)?;          // ~0.4 s to the first answer
//! let keys = moto.seed()?;               // ~1.3 s; signatures checked from here on
//! let creds = moto.credentials_file(&keys.user)?;  // [default] = moat-dev's key
//! moto.client_command(moto.bin("aws"), &creds).args(["sts", "get-caller-identity"]);
//! ```
//!
//! # What moto does (moto 5.2.5, boto3/botocore 1.44.8, awscli 1.46.3)
//!
//! Each checked by running it; `tests/aws.rs` (`moto_facts_hold`, with
//! `tests/aws_facts.py`) re-checks those marked (t) against the pinned venv.
//!
//! **Signatures.** With moto's default (`INITIAL_NO_AUTH_ACTION_COUNT`
//! unset, i.e. infinite) nothing is checked: a wrong secret, an unknown key
//! (answered as `arn:aws:sts::123456789012:user/moto`), an untrusted user's
//! AssumeRole all succeed. [`Moto::seed`] then POSTs `0` to
//! `/moto-api/reset-auth` (the env var set to 0 would refuse the seeding
//! itself: there is no root key); from then on moto recomputes SigV4 with the
//! stored secret (botocore's own signer) and applies the caller's IAM
//! policies (their Action and Resource):
//! - (t) STS and SSM, wrong secret, whether the user's key or AssumeRole's:
//!   403 `SignatureDoesNotMatch: The request signature we calculated does not
//!   match the signature you provided. Check your AWS Secret Access Key and
//!   signing method. Consult the service documentation for details.`
//!   SSM (a JSON service) answers that as an XML `ErrorResponse`, so boto3
//!   reports `Code` `403` with the XML as `Message`, and the CLI `An error
//!   occurred (403) when calling the GetParameter operation: <?xml …`.
//! - (t) S3, wrong secret: 403 `SignatureDoesNotMatch: The request signature
//!   we calculated does not match the signature you provided. Check your key
//!   and signing method.`
//! - (t) Unknown access key, or an AssumeRole key with a wrong or missing
//!   session token: 403 `InvalidClientTokenId: The security token included
//!   in the request is invalid.`
//! - (t) Correctly signed with AssumeRole's credentials: STS, S3 and SSM
//!   answer 200; a key whose policies lack the action is refused:
//!   `AccessDenied: User: arn:aws:iam::123456789012:user/moat-dev is not
//!   authorized to perform: ssm:GetParameter`, S3's `AccessDenied: Access
//!   Denied`. `sts:GetCallerIdentity` is always allowed.
//! - (t) STS/SSM bodies are covered (a byte changed after signing is
//!   `SignatureDoesNotMatch`: botocore sends no `x-amz-content-sha256` there,
//!   so moto hashes the body). S3 is not: moto puts the request's
//!   `x-amz-content-sha256` value into the canonical request and never
//!   compares it with the body (a body swapped after signing is stored);
//!   `UNSIGNED-PAYLOAD` is accepted.
//! - (t) aws-chunked (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`): the seed
//!   signature (the `Authorization` header) is checked; chunk signatures are
//!   not (all-zero ones are accepted and the body decoded), nor is an
//!   `x-amz-checksum-crc32` trailer (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`
//!   with a wrong CRC is stored). A re-signing proxy's chunk signatures are
//!   therefore not checked by this stand-in.
//! - (t) No `Authorization` at all: STS and S3 ListObjectsV2 answer 500 (a
//!   KeyError in moto), S3 GetObject 403 with an empty body.
//!
//! **AssumeRole.** (t) The trust policy is enforced once checks are on:
//! [`UNTRUSTED_USER`] (allowed `sts:AssumeRole` on the role by its own
//! policy) gets 403 `AccessDenied: User:
//! arn:aws:iam::123456789012:user/moat-untrusted is not authorized to
//! perform: sts:AssumeRole`. It is checked only for a role that exists: a
//! user whose policy allows `Resource: *` can assume a role that does not
//! exist, or `not-an-arn-but-long-enough`, and gets credentials for
//! `arn:aws:sts::123456789012:assumed-role/not-an-arn-but-long-enough/agent`
//! (the same with checks off). (t) For [`USER`], whose policy names only
//! [`ROLE_ARN`], a malformed ARN is that same `AccessDenied`. (t) boto3 and
//! the CLI refuse a RoleArn under 20 characters before sending: `Parameter
//! validation failed: Invalid length for parameter RoleArn, value: 10, valid
//! min length: 20`. (t) `DurationSeconds=900` gives `Expiration` 900 s after
//! the request (`2026-12-03T17:24:28.720981Z`: microseconds, `Z`); without it,
//! 3600 s; (t) 899 is accepted (AWS refuses under 900).
//!
//! **Host names through the front.** (t) moto dispatches by `Host`: STS at
//! `sts.amazonaws.com` and `sts.us-east-1.amazonaws.com`, SSM at
//! `ssm.us-east-1.amazonaws.com`, IAM at `iam.amazonaws.com`, S3 path-style
//! at `s3.amazonaws.com/moat-test/…` and virtual-hosted at
//! `moat-test.s3.amazonaws.com` and `moat-test.s3.us-east-1.amazonaws.com`.
//! (t) In us-east-1 with no endpoint set, boto3 and the CLI pick
//! `sts.us-east-1.amazonaws.com` (regional), `ssm.us-east-1.amazonaws.com`,
//! and for S3 the global names, virtual-hosted (`moat-test.s3.amazonaws.com`).
//!
//! **`x-amz-content-sha256` over HTTPS** (botocore's debug log, and (t) a
//! `before-send` hook): PutObject and each UploadPart send
//! `STREAMING-UNSIGNED-PAYLOAD-TRAILER` with `Content-Encoding: aws-chunked`
//! and `x-amz-trailer: x-amz-checksum-crc32` (botocore's default
//! `request_checksum_calculation=when_supported`), from boto3's
//! `put_object`/`upload_file` and from `aws s3 cp` (8 MiB parts: 3 for
//! 20 MiB) and `aws s3api put-object` alike; GetObject, HeadObject and
//! CreateMultipartUpload send the empty body's hash `e3b0c442…b855`,
//! CompleteMultipartUpload its XML's hex SHA-256. With
//! `request_checksum_calculation=when_required` PutObject sends the body's
//! hex SHA-256 and no aws-chunked; `s3.payload_signing_enabled=True` alone
//! changes nothing. Over plain HTTP, PutObject and UploadPart send the hex
//! SHA-256. botocore has no code for `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` at
//! all (its only streaming mode is the unsigned trailer), so no boto3 or aws
//! CLI v1 setting sends signed aws-chunked. Nothing installed here does
//! (the Java SDK v2 has a signer for it, by its source; Maven Central is
//! not reachable from here, and Debian packages no AWS Java SDK); the
//! tests' requests above are signed by hand with botocore's `S3SigV4Auth`.
//! The workspace's `aws-sigv4` (1.6.6) could make one from Rust, from its
//! source (not run): `SignableBody::Precomputed` takes any payload string and
//! `sign::v4::sign_chunk` signs chunks.
//!
//! **Cost.** `moto_server` answers ~0.31 s after spawn (bare, 3 runs;
//! [`Moto::started_in`] ~0.38 s with the wrapper), RSS 53 MB then, 177 MB
//! after [`Moto::seed`] (IAM, STS, S3, SSM loaded), growing with stored
//! objects (336 MB after ~80 MiB of them). [`Moto::seed`] takes ~1.3 s, most
//! of it python importing boto3. If the test process dies without dropping
//! [`Moto`], the server notices its stdin close, removes its directory and
//! exits (seen: gone 1.5 s after a SIGKILL of the test).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{ConnectProxy, TestCa, TlsServer, resolve_entry};

/// moto's default account, which every ARN below is in.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
/// The role [`Moto::seed`] makes; its trust policy allows [`USER`] only.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/AgentRole";
/// The IAM user whose key plays the host's credentials.
pub const USER: &str = "moat-dev";
/// A user allowed `sts:AssumeRole` on [`ROLE_ARN`] by its own policy but not
/// named in the role's trust policy.
pub const UNTRUSTED_USER: &str = "moat-untrusted";
pub const BUCKET: &str = "moat-test";
/// An SSM SecureString parameter holding [`PARAMETER_VALUE`].
pub const PARAMETER: &str = "/moat/test/db";
pub const PARAMETER_VALUE: &str = "postgres://agent:hunter2@db.internal:5432/app";

/// The names the front's certificate holds and [`Moto::resolve_entries`]
/// routes: exact names, as real clients use them in us-east-1.
pub const HOSTS: &[&str] = &[
    "sts.amazonaws.com",
    "sts.us-east-1.amazonaws.com",
    "s3.amazonaws.com",
    "s3.us-east-1.amazonaws.com",
    "moat-test.s3.amazonaws.com",
    "moat-test.s3.us-east-1.amazonaws.com",
    "ssm.us-east-1.amazonaws.com",
    "iam.amazonaws.com",
];

/// Where `scripts/setup.sh` puts the venv, unless `MOAT_AWS_VENV` says.
pub const DEFAULT_VENV: &str = "/opt/moat-aws-venv";

/// An IAM user's long-term access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

/// What [`Moto::seed`] made.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// [`USER`]'s key: the host credentials (trusted by [`ROLE_ARN`]).
    pub user: AccessKey,
    /// [`UNTRUSTED_USER`]'s key (AssumeRole on [`ROLE_ARN`] is AccessDenied).
    pub untrusted: AccessKey,
}

/// A running moto server and its TLS front. Dropping it kills the server;
/// the server also exits by itself when this process dies (it watches its
/// stdin, a pipe from here), so nothing outlives the test.
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    front: TlsServer,
    proxy: ConnectProxy,
    venv: PathBuf,
    dir: tempfile::TempDir,
    ca: PathBuf,
    started_in: Duration,
}

/// Runs moto's server (argv: port, the stand-in's directory). When stdin
/// reaches its end, i.e. the test process is gone without dropping [`Moto`],
/// it removes that directory and exits.
const SERVE_PY: &str = r#"
import os, shutil, sys, threading
def watch():
    sys.stdin.buffer.read()
    shutil.rmtree(sys.argv[2], ignore_errors=True)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

/// Seeds moto through boto3 (argv: endpoint, then the names as JSON), prints
/// the two access keys as JSON, then turns on moto's IAM checks
/// (`/moto-api/reset-auth` 0: every later request must be signed by a known
/// key and allowed by its policies).
const SEED_PY: &str = r#"
import json, sys, boto3, requests
endpoint, cfg = sys.argv[1], json.loads(sys.argv[2])
kw = dict(endpoint_url=endpoint, region_name=cfg["region"],
          aws_access_key_id="seed", aws_secret_access_key="seed")
iam = boto3.client("iam", **kw)
def doc(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
keys = {}
for who, name in (("user", cfg["user"]), ("untrusted", cfg["untrusted"])):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="assume-agent-role", PolicyDocument=doc(
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": cfg["role_arn"]}))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    keys[who] = {"id": k["AccessKeyId"], "secret": k["SecretAccessKey"]}
trusted = "arn:aws:iam::%s:user/%s" % (cfg["account"], cfg["user"])
iam.create_role(RoleName=cfg["role_arn"].split("/")[-1], AssumeRolePolicyDocument=doc(
    {"Effect": "Allow", "Principal": {"AWS": trusted}, "Action": "sts:AssumeRole"}))
iam.put_role_policy(RoleName=cfg["role_arn"].split("/")[-1], PolicyName="agent", PolicyDocument=doc(
    {"Effect": "Allow", "Action": ["s3:*", "ssm:GetParameter", "ssm:GetParameters", "kms:Decrypt"],
     "Resource": "*"}))
boto3.client("s3", **kw).create_bucket(Bucket=cfg["bucket"])
boto3.client("ssm", **kw).put_parameter(Name=cfg["parameter"], Type="SecureString",
                                        Value=cfg["parameter_value"])
r = requests.post(endpoint + "/moto-api/reset-auth", data="0", headers={"content-type": "text/plain"})
r.raise_for_status()
print(json.dumps(keys))
"#;

impl Moto {
    /// Start `moto_server` on a free port of 127.0.0.1, wait until it
    /// answers, and put a TLS front (a leaf from `ca` for [`HOSTS`]) before it.
    pub fn start(ca: &TestCa) -> Result<Self> {
        let venv = std::env::var_os("MOAT_AWS_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VENV));
        if !venv.join("bin/moto_server").exists() {
            bail!(
                "no moto in {} (run scripts/setup.sh, or set MOAT_AWS_VENV to a venv with moto[server], awscli and boto3)",
                venv.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("moat-moto-").tempdir()?;
        let ca_path = ca.write_pem(dir.path())?;
        let begun = Instant::now();
        let (child, addr) = spawn_ready(&venv, dir.path())?;
        let started_in = begun.elapsed();
        let config = ca.server_config(HOSTS, &[b"http/1.1"])?;
        let front = TlsServer::start(config, move |mut tls| async move {
            if let Ok(mut moto) = tokio::net::TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut moto).await;
            }
        })?;
        let proxy = ConnectProxy::start(front.addr)?;
        Ok(Self {
            child,
            addr,
            front,
            proxy,
            venv,
            dir,
            ca: ca_path,
            started_in,
        })
    }

    /// moto itself, plain HTTP: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The TLS front's address (every name in [`HOSTS`] goes here).
    pub fn front_addr(&self) -> SocketAddr {
        self.front.addr
    }

    /// `HOST:443=127.0.0.1:PORT` for each of [`HOSTS`].
    pub fn resolve_entries(&self) -> Vec<String> {
        HOSTS
            .iter()
            .map(|h| resolve_entry(h, self.front.addr))
            .collect()
    }

    /// [`Moto::resolve_entries`] as one `MOAT_RESOLVE` value.
    pub fn moat_resolve(&self) -> String {
        self.resolve_entries().join(",")
    }

    /// The test CA's PEM (for `MOAT_UPSTREAM_CA`, or `AWS_CA_BUNDLE` of a
    /// client that talks to the front itself).
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// A program of the venv: `aws`, `python`, `moto_server`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.venv.join("bin").join(name)
    }

    /// How long `moto_server` took from spawn to its first answer.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The server's process id (to look at its memory, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What moto printed so far (werkzeug's request log, tracebacks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// The request heads (`CONNECT host:443 …`) that clients using
    /// [`Moto::client_env`] sent, so a test can see which names they chose.
    pub fn connects(&self) -> Vec<String> {
        self.proxy.heads()
    }

    /// Create [`USER`] and [`UNTRUSTED_USER`] with access keys (each may
    /// `sts:AssumeRole` on [`ROLE_ARN`]), the role (trusting [`USER`] only;
    /// allowed `s3:*`, `ssm:GetParameter(s)`, `kms:Decrypt`), [`BUCKET`] and
    /// the SecureString [`PARAMETER`]; then turn on moto's signature and
    /// policy checks for every later request. Call once.
    pub fn seed(&self) -> Result<Seeded> {
        let cfg = serde_json::json!({
            "region": REGION,
            "account": ACCOUNT,
            "user": USER,
            "untrusted": UNTRUSTED_USER,
            "role_arn": ROLE_ARN,
            "bucket": BUCKET,
            "parameter": PARAMETER,
            "parameter_value": PARAMETER_VALUE,
        });
        let out = self
            .python()
            .arg("-c")
            .arg(SEED_PY)
            .arg(self.endpoint())
            .arg(cfg.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running the venv's python to seed moto")?;
        if !out.status.success() {
            bail!(
                "seeding moto failed ({}): {}\nmoto's log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("seed output {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let key = |who: &str| -> Result<AccessKey> {
            let field = |f: &str| {
                keys[who][f]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("no {who}.{f} in the seed output"))
            };
            Ok(AccessKey {
                id: field("id")?,
                secret: field("secret")?,
            })
        };
        Ok(Seeded {
            user: key("user")?,
            untrusted: key("untrusted")?,
        })
    }

    /// Write `key` as the `[default]` profile of an AWS shared credentials
    /// file in this stand-in's temporary directory; returns its path.
    pub fn credentials_file(&self, key: &AccessKey) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("credentials-{}", key.id));
        std::fs::write(
            &path,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                key.id, key.secret
            ),
        )?;
        Ok(path)
    }

    /// The environment for an AWS client on the host (aws CLI, boto3) that
    /// reaches the front by the real names, with no DNS: `HTTPS_PROXY` is a
    /// local CONNECT proxy that tunnels every host to the front, the test CA
    /// is `AWS_CA_BUNDLE`, `credentials` the shared credentials file, no
    /// config file, region [`REGION`], instance metadata off.
    pub fn client_env(&self, credentials: &Path) -> Vec<(&'static str, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            ("HTTPS_PROXY", format!("http://{}", self.proxy.addr)),
            ("https_proxy", format!("http://{}", self.proxy.addr)),
            ("NO_PROXY", String::new()),
            ("no_proxy", String::new()),
            ("AWS_CA_BUNDLE", path(&self.ca)),
            ("AWS_SHARED_CREDENTIALS_FILE", path(credentials)),
            ("AWS_CONFIG_FILE", "/dev/null".into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// `program` (e.g. [`Moto::bin`]`("aws")`) with none of the caller's AWS
    /// or proxy settings, and [`Moto::client_env`] for `credentials`.
    pub fn client_command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        credentials: &Path,
    ) -> Command {
        let mut cmd = Command::new(program);
        scrub(&mut cmd);
        cmd.envs(self.client_env(credentials));
        cmd
    }

    /// The venv's python with none of the caller's AWS or proxy settings.
    fn python(&self) -> Command {
        let mut cmd = Command::new(self.bin("python"));
        scrub(&mut cmd);
        cmd
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Remove what would steer a python AWS client away from loopback or to
/// the caller's real credentials.
fn scrub(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("AWS_") || upper.ends_with("_PROXY") || upper == "MOTO_PORT" {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

/// Spawn moto on a free port and wait for its first answer. A port taken
/// between choosing and binding it makes moto exit; then try another.
fn spawn_ready(venv: &Path, dir: &Path) -> Result<(Child, SocketAddr)> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let mut cmd = Command::new(venv.join("bin/python"));
        scrub(&mut cmd);
        let mut child = cmd
            .arg("-c")
            .arg(SERVE_PY)
            .arg(port.to_string())
            .arg(dir)
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "inf")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning moto_server")?;
        match wait_answering(&mut child, addr, Duration::from_secs(30)) {
            Ok(()) => return Ok((child, addr)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                last = format!(
                    "{e}; moto's log:\n{}",
                    std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
                );
            }
        }
    }
    bail!("moto_server did not start: {last}")
}

/// Poll `GET /moto-api/` until an HTTP answer comes, the child exits, or
/// `limit` passes.
fn wait_answering(child: &mut Child, addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("moto_server exited ({status})");
        }
        if answers(addr) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("moto_server did not answer on {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}
