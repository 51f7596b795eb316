//! `moat-stub-upstream`: a local HTTPS stand-in for api.github.com, for the
//! demo. Writes its CA to `--ca-out`, prints `ready 127.0.0.1:PORT`, serves
//! until killed. `--accept TOKEN`: only that token is valid.

use std::path::PathBuf;

const USAGE: &str = "usage: moat-stub-upstream --ca-out FILE [--accept TOKEN]";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut ca_out, mut accept) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ca-out" => ca_out = args.next().map(PathBuf::from),
            "--accept" => accept = args.next(),
            other => anyhow::bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let ca_out = ca_out.ok_or_else(|| anyhow::anyhow!(USAGE))?;
    let ca = moat_testkit::TestCa::new()?;
    std::fs::write(&ca_out, ca.pem())?;
    let handler = moat_testkit::fake_github_accepting(accept);
    let server = moat_testkit::StubServer::start(&ca, &["api.github.com", "github.com"], handler)?;
    println!("ready {}", server.addr);
    loop {
        std::thread::park();
    }
}
