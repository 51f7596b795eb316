//! The AWS stand-in proves itself.

use std::path::Path;

use moat_testkit::TestCa;
use moat_testkit::aws::{ACCOUNT, Moto, USER};

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
