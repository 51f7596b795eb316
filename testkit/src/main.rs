//! `moat-stub-upstream`: a local HTTPS stand-in for api.github.com, for the
//! demo. Writes its CA to `--ca-out`, prints `ready 127.0.0.1:PORT`, serves
//! until killed.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut ca_out = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ca-out" => ca_out = args.next().map(PathBuf::from),
            other => {
                anyhow::bail!("unknown argument {other}; usage: moat-stub-upstream --ca-out FILE")
            }
        }
    }
    let ca_out =
        ca_out.ok_or_else(|| anyhow::anyhow!("usage: moat-stub-upstream --ca-out FILE"))?;
    let ca = moat_testkit::TestCa::new()?;
    std::fs::write(&ca_out, ca.pem())?;
    let server = moat_testkit::StubServer::start(
        &ca,
        &["api.github.com", "github.com"],
        moat_testkit::fake_github(),
    )?;
    println!("ready {}", server.addr);
    loop {
        std::thread::park();
    }
}
