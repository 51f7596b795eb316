//! `moat grant aws` and `secrets: ssm://` against a real moto server (STS,
//! SSM) behind TLS, reached by the real AWS host names through
//! `MOAT_RESOLVE` and trusted through `MOAT_UPSTREAM_CA`. Moat's side is
//! the AWS SDK with the host's credential chain: here a shared credentials
//! file. Nothing tries the internet (instance metadata off, every AWS name
//! resolved to the stand-in).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Env, ok, stderr, stdout};
use moat_testkit::TestCa;
use moat_testkit::aws::{AccessKey, Moto, PARAMETER, PARAMETER_VALUE, ROLE_ARN, Seeded};

struct Aws {
    moto: Moto,
    keys: Seeded,
    _ca: TestCa,
}

fn aws() -> Aws {
    let ca = TestCa::new().unwrap();
    let moto = Moto::start(&ca).unwrap();
    let keys = moto.seed().unwrap();
    Aws {
        moto,
        keys,
        _ca: ca,
    }
}

impl Aws {
    /// The host's AWS environment for `moat`: credentials from `creds`
    /// (a shared credentials file), no config file, no metadata.
    fn env(&self, creds: &Path) -> Vec<(String, String)> {
        vec![
            ("MOAT_RESOLVE".into(), self.moto.moat_resolve()),
            (
                "MOAT_UPSTREAM_CA".into(),
                self.moto.ca_path().display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                creds.display().to_string(),
            ),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    fn creds(&self, key: &AccessKey) -> PathBuf {
        self.moto.credentials_file(key).unwrap()
    }
}

fn run(env: &Env, args: &[&str], vars: &[(String, String)]) -> std::process::Output {
    env.cmd()
        .args(args)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn nothing_stored(env: &Env) {
    let out = env.run(&["grant", "list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&ok(&out).stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}

/// The seed's flow: the role is assumed once with the host's credentials,
/// the lines the seed shows are printed, and only the role's configuration
/// is stored, no key of any kind.
#[test]
fn grant_aws_assumes_the_role_and_stores_only_its_configuration() {
    let aws = aws();
    let env = Env::new();
    let creds = aws.creds(&aws.keys.user);
    let vars = aws.env(&creds);
    let out = run(
        &env,
        &[
            "grant",
            "aws",
            "--role",
            ROLE_ARN,
            "--region",
            "us-east-1",
            "--session-duration",
            "2h30m",
            "--external-id",
            "ext-1",
        ],
        &vars,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\nmoto:\n{}", aws.moto.log());
    // (Less any note of Moat's own, such as where the key file went.)
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("moat: ")).collect();
    assert_eq!(
        lines,
        [
            format!("Assuming role: {ROLE_ARN}").as_str(),
            "Region: us-east-1",
            "Session duration: 2h30m0s",
            "Role assumed successfully",
        ],
        "{err}"
    );
    assert_eq!(stdout(&out).trim(), "AWS credential saved");
    // STS really was asked, by its regional name.
    assert!(
        aws.moto.log().contains("AssumeRole") || aws.moto.log().contains("POST / "),
        "{}",
        aws.moto.log()
    );
    let show = run(&env, &["grant", "show", "aws", "--json", "--reveal"], &vars);
    let text = stdout(ok(&show));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["provider"], "aws");
    let meta = &v["metadata"];
    assert_eq!(meta["role_arn"], ROLE_ARN, "{text}");
    assert_eq!(meta["region"], "us-east-1");
    assert_eq!(meta["session_duration_secs"], "9000");
    assert_eq!(meta["external_id"], "ext-1");
    assert_eq!(meta["inject"], "credential-process");
    // No key: neither the host's nor a temporary one.
    for secret in [&aws.keys.user.id, &aws.keys.user.secret] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(!text.contains("ASIA"), "{text}");

    // The default duration is the seed's 15m; --inject sigv4 is stored.
    let out = run(
        &env,
        &["grant", "aws", "--role", ROLE_ARN, "--inject", "sigv4"],
        &vars,
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Session duration: 15m0s\n"), "{err}");
    assert!(!err.contains("Region:"), "{err}");
    let show = run(&env, &["grant", "show", "aws", "--json"], &vars);
    let v: serde_json::Value = serde_json::from_slice(&ok(&show).stdout).unwrap();
    assert_eq!(v["metadata"]["inject"], "sigv4");
    assert_eq!(v["metadata"]["session_duration_secs"], "900");
}

/// Each error a user meets says what to do, and nothing is saved.
#[test]
fn grant_aws_errors_name_the_fix_and_save_nothing() {
    let aws = aws();
    let env = Env::new();
    let good = aws.creds(&aws.keys.user);
    let grant = |extra: &[&str], vars: &[(String, String)]| {
        let mut args = vec!["grant", "aws"];
        args.extend_from_slice(extra);
        let out = run(&env, &args, vars);
        assert!(!out.status.success(), "{}", stderr(&out));
        nothing_stored(&env);
        stderr(&out)
    };
    let vars = aws.env(&good);

    let e = grant(&["--role", "AgentRole"], &vars);
    assert!(
        e.contains("'AgentRole' is not an IAM role ARN")
            && e.contains("arn:aws:iam::123456789012:role/AgentRole")
            && e.contains("Nothing was saved"),
        "{e}"
    );
    let e = grant(&[], &vars);
    assert!(e.contains("--role ARN"), "{e}");
    let e = grant(&["--role", ROLE_ARN, "--session-duration", "10m"], &vars);
    assert!(
        e.contains("2h30m") && e.contains("between 15m and 12h"),
        "{e}"
    );
    let e = grant(&["--role", ROLE_ARN, "--inject", "header"], &vars);
    assert!(
        e.contains("'credential-process'") && e.contains("'sigv4'"),
        "{e}"
    );

    // A profile that is not defined anywhere.
    let e = grant(&["--role", ROLE_ARN, "--aws-profile", "nope"], &vars);
    assert!(
        e.contains("the AWS profile 'nope' is not defined") && e.contains("list-profiles"),
        "{e}"
    );
    let mut via_env = vars.clone();
    via_env.push(("AWS_PROFILE".into(), "nope".into()));
    let e = grant(&["--role", ROLE_ARN], &via_env);
    assert!(e.contains("the AWS profile 'nope' is not defined"), "{e}");

    // No host credentials at all.
    let none = env.dir.path().join("no-credentials");
    let e = grant(&["--role", ROLE_ARN], &aws.env(&none));
    assert!(
        e.contains("no AWS credentials found on this host") && e.contains("aws configure"),
        "{e}"
    );

    // A host identity the role's trust policy does not name.
    let untrusted = aws.creds(&aws.keys.untrusted);
    let e = grant(&["--role", ROLE_ARN], &aws.env(&untrusted));
    assert!(
        e.contains(&format!("not allowed to assume {ROLE_ARN}"))
            && e.contains("trust policy")
            && e.contains("Nothing was saved"),
        "{e}"
    );

    // STS out of reach (a closed port stands in for it).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut vars = aws.env(&good);
    vars[0].1 = format!("sts.us-east-1.amazonaws.com:443=127.0.0.1:{port}");
    let e = grant(&["--role", ROLE_ARN], &vars);
    assert!(e.contains("cannot reach AWS STS"), "{e}");
}

/// `secrets: ssm://` through the SDK (no aws CLI on Moat's side): a
/// SecureString reaches the command decrypted; a missing parameter or no
/// credentials abort the run before it starts, with the AWS words.
#[test]
fn ssm_secrets_resolve_through_the_sdk_or_abort_the_run() {
    let aws = aws();
    let env = Env::new();
    let ws = env.dir.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    // Moat reads the parameter as AgentRole (the user itself may not),
    // which the SDK's own chain assumes from a profile: role_arn +
    // source_profile, as many hosts are set up.
    let creds = aws.creds(&aws.keys.user);
    let config = env.dir.path().join("aws-config");
    fs::write(
        &config,
        format!("[profile agent]\nrole_arn = {ROLE_ARN}\nsource_profile = default\n"),
    )
    .unwrap();
    let with_profile = |mut vars: Vec<(String, String)>| {
        vars.retain(|(k, _)| k != "AWS_CONFIG_FILE");
        vars.push(("AWS_CONFIG_FILE".into(), config.display().to_string()));
        vars.push(("AWS_PROFILE".into(), "agent".into()));
        vars.push(("AWS_REGION".into(), "us-east-1".into()));
        vars
    };
    let mut vars = with_profile(aws.env(&creds));
    // The aws CLI is not on Moat's PATH: only the SDK can answer.
    vars.push(("PATH".into(), "/usr/bin:/bin".into()));
    let moat_run = |yaml: &str, vars: &[(String, String)]| {
        fs::write(ws.join("moat.yaml"), yaml).unwrap();
        let mut args = vec![
            "run",
            ws.to_str().unwrap(),
            "--yes",
            "--network-mode",
            "env",
        ];
        if !is_root() {
            args.push("--insecure-env");
        }
        args.extend(["--", "sh", "-c", "echo \"db=$DB\""]);
        run(&env, &args, vars)
    };
    let out = moat_run(&format!("secrets:\n  DB: ssm://{PARAMETER}\n"), &vars);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("db={PARAMETER_VALUE}"));
    // The region in the reference wins over AWS_REGION's.
    let out = moat_run(
        &format!("secrets:\n  DB: ssm://us-east-1{PARAMETER}\n"),
        &vars,
    );
    assert_eq!(
        stdout(&out).trim(),
        format!("db={PARAMETER_VALUE}"),
        "{}",
        stderr(&out)
    );

    let runs_before = env.run_ids().len();
    let out = moat_run("secrets:\n  DB: ssm:///moat/test/nope\n", &vars);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("secrets: DB") && e.contains("ParameterNotFound"),
        "{e}"
    );
    assert!(!stdout(&out).contains("db="), "the command ran");

    // The user's own key may not read it: the AWS error, said once.
    let mut direct = aws.env(&creds);
    direct.push(("AWS_REGION".into(), "us-east-1".into()));
    direct.push(("PATH".into(), "/usr/bin:/bin".into()));
    let out = moat_run(&format!("secrets:\n  DB: ssm://{PARAMETER}\n"), &direct);
    assert_eq!(out.status.code(), Some(125));
    let e = stderr(&out);
    assert!(
        e.contains("AccessDenied") && e.contains("ssm:GetParameter"),
        "{e}"
    );

    let none = env.dir.path().join("no-credentials");
    let mut vars = aws.env(&none);
    vars.push(("AWS_REGION".into(), "us-east-1".into()));
    vars.push(("PATH".into(), "/usr/bin:/bin".into()));
    let out = moat_run(&format!("secrets:\n  DB: ssm://{PARAMETER}\n"), &vars);
    assert_eq!(out.status.code(), Some(125));
    let e = stderr(&out);
    assert!(e.contains("Unable to locate credentials"), "{e}");
    // Nothing started: no run directory was made for the failures.
    assert_eq!(env.run_ids().len(), runs_before);
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
