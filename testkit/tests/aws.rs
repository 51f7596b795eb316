//! The AWS stand-in proves itself, and the facts `testkit/src/aws.rs` states
//! about moto still hold for the pinned version.

use std::path::Path;

use moat_testkit::TestCa;
use moat_testkit::aws::{ACCOUNT, Moto, PARAMETER_VALUE, USER};

/// The real aws CLI, with the seeded user's key in a shared credentials
/// file, asks STS who it is through the TLS front by the real host name (a
/// local CONNECT proxy, the test CA); moto, checking signatures by then,
/// answers with the user's ARN, and refuses the same key with a wrong secret.
#[test]
fn aws_cli_get_caller_identity_through_the_front() {
    let ca = TestCa::new().unwrap();
    let moto = Moto::start(&ca).unwrap();
    let seeded = moto.seed().unwrap();
    let aws = |creds: &Path| {
        moto.client_command(moto.bin("aws"), creds)
            .args([
                "sts",
                "get-caller-identity",
                "--output",
                "json",
                "--endpoint-url",
                "https://sts.us-east-1.amazonaws.com",
            ])
            .output()
            .unwrap()
    };

    let out = aws(&moto.credentials_file(&seeded.user).unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aws failed: {}\n{stdout}\nmoto:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moto.log()
    );
    let who: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(who["Arn"], format!("arn:aws:iam::{ACCOUNT}:user/{USER}"));
    assert_eq!(who["Account"], ACCOUNT);

    let mut forged = seeded.user.clone();
    forged.secret = "w".repeat(40);
    let out = aws(&moto.credentials_file(&forged).unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("(SignatureDoesNotMatch)"), "{stderr}");

    let connects = moto.connects();
    assert_eq!(connects.len(), 2, "{connects:?}");
    assert!(
        connects
            .iter()
            .all(|h| h.starts_with("CONNECT sts.us-east-1.amazonaws.com:443 ")),
        "{connects:?}"
    );
}

/// `tests/aws_facts.py` observes moto (directly and through the front) and
/// boto3; each line here is a fact in aws.rs's module doc.
#[test]
fn moto_facts_hold() {
    let ca = TestCa::new().unwrap();
    let moto = Moto::start(&ca).unwrap();
    let seeded = moto.seed().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 20 << 20]).unwrap();
    let keys = serde_json::json!({
        "user": {"id": seeded.user.id, "secret": seeded.user.secret},
        "untrusted": {"id": seeded.untrusted.id, "secret": seeded.untrusted.secret},
    });
    let out = moto
        .client_command(
            moto.bin("python"),
            &moto.credentials_file(&seeded.user).unwrap(),
        )
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aws_facts.py"))
        .arg(moto.endpoint())
        .arg(keys.to_string())
        .arg(&big)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws_facts.py: {}\nmoto:\n{}",
        String::from_utf8_lossy(&out.stderr),
        moto.log()
    );
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fact = |name: &str| match &facts[name] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    const SIG: &str = "403 SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    const S3_SIG: &str = "403 SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided. Check your key and signing method.";
    const BAD_TOKEN: &str =
        "403 InvalidClientTokenId: The security token included in the request is invalid.";
    let expected: &[(&str, &str)] = &[
        ("sts wrong secret", SIG),
        ("sts unknown key", BAD_TOKEN),
        ("sts body changed after signing", SIG),
        (
            "assume 900 expiration format",
            "DDDD-DD-DDTDD:DD:DD.DDDDDDZ",
        ),
        ("assumed sts", "200 ok"),
        ("assumed sts wrong secret", SIG),
        ("assumed sts wrong token", BAD_TOKEN),
        ("assumed ssm", "200 ok"),
        ("assumed ssm wrong secret", SIG),
        ("assumed ssm body changed after signing", SIG),
        (
            "user ssm (no ssm policy)",
            "403 AccessDenied: User: arn:aws:iam::123456789012:user/moat-dev is not authorized to perform: ssm:GetParameter",
        ),
        ("assumed s3 get", "200 ok"),
        ("assumed s3 wrong secret", S3_SIG),
        ("user s3 (no s3 policy)", "403 AccessDenied: Access Denied"),
        (
            "s3 body not matching x-amz-content-sha256",
            "200 ok, stored 'swapped'",
        ),
        ("s3 UNSIGNED-PAYLOAD", "200 ok, stored 'unsigned'"),
        (
            "s3 aws-chunked, chunk signatures all zero",
            "200 ok, stored 'hello'",
        ),
        ("s3 aws-chunked, seed signed with wrong secret", S3_SIG),
        ("s3 unsigned trailer, wrong crc32", "200 ok, stored 'hello'"),
        ("s3 GetObject, no Authorization", "403 ''"),
        ("s3 ListObjectsV2, no Authorization", "500"),
        ("sts no Authorization", "500"),
        (
            "assume untrusted user",
            "403 AccessDenied: User: arn:aws:iam::123456789012:user/moat-untrusted is not authorized to perform: sts:AssumeRole",
        ),
        (
            "assume malformed arn",
            "403 AccessDenied: User: arn:aws:iam::123456789012:user/moat-dev is not authorized to perform: sts:AssumeRole",
        ),
        ("assume 899 s", "200 ok"),
        (
            "boto3 malformed arn",
            "Parameter validation failed: Invalid length for parameter RoleArn, value: 10, valid min length: 20",
        ),
        (
            "front sts default",
            "arn:aws:iam::123456789012:user/moat-dev",
        ),
        (
            "front sts global",
            "arn:aws:iam::123456789012:user/moat-dev",
        ),
        ("front ssm", PARAMETER_VALUE),
        ("front iam", "AccessDenied"),
        ("front s3 path default", "s3.amazonaws.com path"),
        (
            "front s3 virtual default",
            "moat-test.s3.amazonaws.com virtual",
        ),
        (
            "front s3 virtual https://s3.us-east-1.amazonaws.com",
            "moat-test.s3.us-east-1.amazonaws.com virtual",
        ),
    ];
    for (name, want) in expected {
        assert_eq!(fact(name), *want, "fact {name:?}; all: {facts:#}");
    }
    let late = facts["assume 900 expires after Date"].as_i64().unwrap();
    assert!((900..=901).contains(&late), "{late}");
    let sends: Vec<&str> = facts["boto3 https sends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert_eq!(
        sends,
        [
            format!("GET moat-test.s3.amazonaws.com/big {empty}"),
            "POST moat-test.s3.amazonaws.com/big?uploadId=… <sha256 hex>".to_owned(),
            format!("POST moat-test.s3.amazonaws.com/big?uploads {empty}"),
            "PUT moat-test.s3.amazonaws.com/big?uploadId=…&partNumber=N STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned(),
            "PUT moat-test.s3.amazonaws.com/small STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned(),
        ]
    );
    let hosts: std::collections::BTreeSet<String> = moto
        .connects()
        .iter()
        .filter_map(|h| h.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        [
            "iam.amazonaws.com:443",
            "moat-test.s3.amazonaws.com:443",
            "moat-test.s3.us-east-1.amazonaws.com:443",
            "s3.amazonaws.com:443",
            "ssm.us-east-1.amazonaws.com:443",
            "sts.amazonaws.com:443",
            "sts.us-east-1.amazonaws.com:443",
        ]
    );
}
