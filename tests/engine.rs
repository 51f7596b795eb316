//! The proxy engine through its library API: the transparent front door
//! (with a fixed original destination standing in for the redirector, which
//! the sandbox tests exercise for real), response substitution, upstream
//! timeouts, pipelining and trailers.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat::home::MoatHome;
use moat::net::orig_dst::{NameLookup, OriginalDst};
use moat::net::{Resolve, Upstream};
use moat::providers::{HostPattern, Registry};
use moat::proxy::{Engine, Grant, Limits, MoatCa, Policy};
use moat_testkit::{Sink, TestCa};
use secrecy::SecretString;

const GH: &str = "ghp_EngineTestToken000000000000000000000";

/// Every connection "was going to" `dst`; the redirector in real runs.
struct Fixed(SocketAddr);

impl OriginalDst for Fixed {
    fn original_dst(&self, _: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
        Ok(self.0)
    }
}

struct Door {
    listen: SocketAddr,
    moat_ca: std::path::PathBuf,
    sink: Sink,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// A transparent listener whose connections all claim to be for `host`:443.
fn door(host: &'static str, grants: Vec<Grant>, limits: Limits) -> Door {
    let synthetic: IpAddr = "198.18.0.7".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    door_to(
        SocketAddr::new(synthetic, 443),
        Some(host),
        grants,
        limits,
        Policy::default(),
        dir,
        None,
    )
}

/// A transparent listener whose connections all claim to be for `dst`,
/// named `name` (the redirector's lookup); `MOAT_RESOLVE` holds the sink's
/// names and `down.test`, whose port refuses connections. With `events`,
/// the engine records its events there (flushed when the door is dropped).
fn door_to(
    dst: SocketAddr,
    name: Option<&'static str>,
    grants: Vec<Grant>,
    limits: Limits,
    policy: Policy,
    dir: tempfile::TempDir,
    events: Option<std::path::PathBuf>,
) -> Door {
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_pem(dir.path()).unwrap();
    let sink = Sink::start(
        &ca,
        &["api.github.com", "plain.test", "auth.example.test"],
        &[b"h2", b"http/1.1"],
    )
    .unwrap();
    let mut resolve = Resolve::default();
    for h in ["api.github.com", "plain.test", "auth.example.test"] {
        resolve.add(&sink.server.resolve_entry(h), "test").unwrap();
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for port in [80, 443] {
        resolve
            .add(&format!("down.test:{port}={closed}"), "test")
            .unwrap();
    }
    let upstream = Upstream::new(
        resolve,
        Some(&ca_file),
        hyper_util::client::proxy::matcher::Matcher::builder().build(),
    )
    .unwrap();
    let home = MoatHome::new(dir.path().join("moat"), None);
    let moat_ca = Arc::new(MoatCa::load_or_create(&home).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listen = rt.block_on(async {
        let engine = Engine::new(moat_ca.clone(), &grants, upstream, policy, limits).unwrap();
        if let Some(path) = &events {
            engine.set_events(moat::events::Events::create(path).unwrap());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let names: NameLookup =
            Arc::new(move |ip| (ip == dst.ip()).then(|| name.map(str::to_owned)).flatten());
        tokio::spawn(engine.serve_transparent(listener, Arc::new(Fixed(dst)), Some(names)));
        addr
    });
    Door {
        listen,
        moat_ca: moat_ca.cert_path().clone(),
        sink,
        _rt: rt,
        _dir: dir,
    }
}

fn github_grant() -> Grant {
    let reg = Registry::builtin_and_shipped();
    Grant {
        name: "github".into(),
        provider: reg.get("github").unwrap().clone(),
        token: SecretString::from(GH),
        placeholder: None,
        live: None,
        aws: None,
    }
}

fn curl(door: &Door, host: &str, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--connect-to",
            &format!("{host}:443:{}", door.listen),
            "--cacert",
        ])
        .arg(&door.moat_ca)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn transparent_connections_are_named_intercepted_and_injected() {
    let d = door("api.github.com", vec![github_grant()], Limits::default());
    let out = curl(&d, "api.github.com", &["https://api.github.com/user"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The upstream got the token; its echo comes back with the stand-in.
    assert_eq!(
        d.sink.server.seen().last().unwrap().header("authorization"),
        [format!("Bearer {GH}")]
    );
    assert!(!out.stdout.windows(GH.len()).any(|w| w == GH.as_bytes()));
    assert!(
        v["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Bearer moat-redacted-")
    );
    // No SNI (a client that connects by address): the name comes from the
    // redirector's lookup, and injection still happens.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-k",
            &format!("https://{}/nosni", d.listen),
        ])
        .output()
        .unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok());
    assert_eq!(
        d.sink.server.seen().last().unwrap().header("authorization"),
        [format!("Bearer {GH}")]
    );
}

#[test]
fn transparent_non_granted_hosts_are_spliced() {
    let d = door("plain.test", vec![github_grant()], Limits::default());
    // The upstream's own certificate arrives: not intercepted.
    let out = curl(&d, "plain.test", &["https://plain.test/x"]);
    assert!(!out.status.success());
    let test_ca = d._dir.path().join("test-ca.pem");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--connect-to",
            &format!("plain.test:443:{}", d.listen),
            "--cacert",
        ])
        .arg(&test_ca)
        .arg("https://plain.test/x")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["headers"]["authorization"].is_null());
}

#[test]
fn response_substitution_keeps_the_real_token_out() {
    let reg = Registry::builtin_and_shipped();
    let mut provider = reg.get("openai").unwrap().clone();
    provider.hosts = vec![HostPattern::parse("auth.example.test").unwrap()];
    provider.response_hosts = provider.hosts.clone();
    if let moat::providers::Injection::Headers(rules) = &mut provider.injection {
        rules[0].hosts = provider.hosts.clone();
    }
    let grant = Grant {
        name: "oauthy".into(),
        provider,
        token: SecretString::from("real-access-token-123"),
        placeholder: Some("placeholder-token-xyz".into()),
        live: None,
        aws: None,
    };
    let d = door("auth.example.test", vec![grant], Limits::default());
    // The echo upstream puts the (injected) token in its response body.
    let out = curl(
        &d,
        "auth.example.test",
        &["https://auth.example.test/token"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("real-access-token-123"), "{text}");
    assert!(text.contains("Bearer placeholder-token-xyz"), "{text}");
    let seen = d.sink.server.seen();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        ["Bearer real-access-token-123"]
    );
    assert!(seen.last().unwrap().header("accept-encoding").is_empty());
}

#[test]
fn slow_upstream_gets_a_504_that_names_it() {
    let limits = Limits {
        response_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let d = door("api.github.com", vec![github_grant()], limits);
    let start = Instant::now();
    let out = curl(
        &d,
        "api.github.com",
        &["-w", "\n%{http_code}", "https://api.github.com/slow"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("504"), "{text}");
    assert!(
        text.contains("moat: api.github.com:443 sent no response"),
        "{text}"
    );
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[test]
fn stalled_upstream_body_is_cut_off_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let d = door("api.github.com", vec![github_grant()], limits);
    let start = Instant::now();
    let out = curl(&d, "api.github.com", &["https://api.github.com/stall"]);
    assert!(!out.status.success(), "a stalled body must end in an error");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("partial"));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn pipelined_requests_and_trailers() {
    let d = door("api.github.com", vec![github_grant()], Limits::default());
    // Two requests in one write on one connection (HTTP/1.1 pipelining).
    let script = format!(
        "printf 'GET /one HTTP/1.1\\r\\nHost: api.github.com\\r\\n\\r\\nGET /two HTTP/1.1\\r\\nHost: api.github.com\\r\\nConnection: close\\r\\n\\r\\n' \
         | timeout 20 openssl s_client -quiet -connect {} -servername api.github.com -CAfile {} 2>/dev/null",
        d.listen,
        d.moat_ca.display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let one = text.find("\"path\":\"/one\"").unwrap();
    let two = text.find("\"path\":\"/two\"").unwrap();
    assert!(one < two, "responses out of order");
    // Trailers survive the proxy (h2 end to end).
    let out = curl(
        &d,
        "api.github.com",
        &["--http2", "-v", "https://api.github.com/trailers"],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(String::from_utf8_lossy(&out.stdout).contains("body-before-trailers"));
    assert!(err.contains("x-checksum: abc123"), "{err}");
}

/// The run's events, one JSON value per line.
fn read_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn unreachable_and_refused_destinations_get_an_answer_that_says_why() {
    // Permissive (the default): these hosts would be spliced, but their
    // connection cannot be made. The client still speaks to Moat (TLS
    // terminated with a Moat leaf, or plain HTTP), so it gets a status and a
    // reason instead of an empty reply.
    let keep = tempfile::tempdir().unwrap();
    let events = keep.path().join("down.jsonl");
    let down = door_to(
        "198.18.0.9:443".parse().unwrap(),
        Some("down.test"),
        vec![github_grant()],
        Limits::default(),
        Policy::default(),
        tempfile::tempdir().unwrap(),
        Some(events.clone()),
    );
    for version in ["--http1.1", "--http2"] {
        let out = curl(
            &down,
            "down.test",
            &[version, "-w", "\n%{http_code}", "https://down.test/x"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.ends_with("502"), "{version}: {text}");
        assert!(
            text.contains("moat: cannot connect to down.test:443: ")
                && text.to_lowercase().contains("refused"),
            "{version}: {text}"
        );
    }
    drop(down);
    let ev = read_events(&events);
    assert!(
        ev.iter().any(|e| e["event"] == "connect"
            && e["host"] == "down.test"
            && e["action"] == "unreachable"),
        "{ev:?}"
    );
    assert!(!ev.iter().any(|e| e["action"] == "splice"), "{ev:?}");

    // Cloud metadata over plain HTTP, by address: refused by the guard, a
    // 403 that says so, and a deny event with the reason.
    let events = keep.path().join("meta.jsonl");
    let meta = door_to(
        "169.254.169.254:80".parse().unwrap(),
        None,
        vec![github_grant()],
        Limits::default(),
        Policy::default(),
        tempfile::tempdir().unwrap(),
        Some(events.clone()),
    );
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--connect-to",
        ])
        .arg(format!("169.254.169.254:80:{}", meta.listen))
        .arg("http://169.254.169.254/latest/meta-data/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("403"), "{text}");
    assert!(
        text.contains("moat: blocked by Moat policy: not connecting to 169.254.169.254:80: ")
            && text.contains("link-local"),
        "{text}"
    );
    drop(meta);
    let ev = read_events(&events);
    let deny = ev
        .iter()
        .find(|e| e["event"] == "deny")
        .unwrap_or_else(|| panic!("no deny event: {ev:?}"));
    assert_eq!(deny["host"], "169.254.169.254");
    assert_eq!(deny["port"], 80);
    assert!(
        deny["reason"].as_str().unwrap().contains("link-local"),
        "{deny}"
    );
    assert!(!ev.iter().any(|e| e["action"] == "splice"), "{ev:?}");
    assert!(
        ev.iter()
            .any(|e| e["event"] == "connect" && e["action"] == "deny"),
        "{ev:?}"
    );
}

#[test]
fn route_rules_match_normalized_paths_and_refuse_the_rest() {
    use moat::proxy::rules::{HostRule, NetworkPolicy, Route};
    let policy = Policy {
        network: NetworkPolicy {
            rules: vec![HostRule {
                host: HostPattern::parse("api.github.com").unwrap(),
                routes: vec![
                    Route::parse("deny * /admin").unwrap(),
                    Route::parse("deny * /admin/**").unwrap(),
                ],
            }],
            ..Default::default()
        },
        ..Default::default()
    };
    let d = door_to(
        "198.18.0.7:443".parse().unwrap(),
        Some("api.github.com"),
        vec![github_grant()],
        Limits::default(),
        policy,
        tempfile::tempdir().unwrap(),
        None,
    );
    for version in ["--http1.1", "--http2"] {
        for path in [
            "/admin",
            "/x/../admin",
            "/%61dmin",
            "//admin",
            "/admin/./keys",
            "/x/%2e%2e/admin/keys",
            "/x%2F..%2Fadmin",
        ] {
            let url = format!("https://api.github.com{path}");
            let out = curl(
                &d,
                "api.github.com",
                &[version, "--path-as-is", "-w", "\n%{http_code}", &url],
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.ends_with("403"), "{version} {path}: {text}");
            assert!(!text.contains(GH), "{version} {path}: {text}");
        }
        // Case-sensitive: /ADMIN is another path (docs/config.md says so).
        let out = curl(
            &d,
            "api.github.com",
            &[
                version,
                "-w",
                "\n%{http_code}",
                "https://api.github.com/ADMIN",
            ],
        );
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("200"));
    }
    let seen = d.sink.server.seen();
    assert!(
        seen.iter().all(|s| s.path == "/ADMIN"),
        "only /ADMIN reaches the upstream: {:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
}
