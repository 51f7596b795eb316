//! `moat-agent-standins`: local HTTPS stand-ins for the model APIs of Claude
//! Code (api.anthropic.com), Codex (api.openai.com) and the Gemini CLI
//! (generativelanguage.googleapis.com), for running the real CLIs against
//! loopback (`testkit::agents`). Writes the CA to `--ca-out`, prints
//! `MOAT_RESOLVE=HOST:443=127.0.0.1:PORT,…`, serves until killed. Each
//! request is logged on stderr (`HOST METHOD PATH -> STATUS`); with `--log
//! FILE`, also appended to FILE as JSON lines (headers and body included).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use moat_testkit::agents::AgentStandins;
use moat_testkit::{Handler, Seen};

const USAGE: &str = "usage: moat-agent-standins --ca-out FILE --key-anthropic K --key-openai K \
                     --key-gemini K --reply TEXT [--log FILE]";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut ca_out, mut ka, mut ko, mut kg, mut reply, mut log) =
        (None, None, None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--ca-out" => ca_out = Some(PathBuf::from(value()?)),
            "--key-anthropic" => ka = Some(value()?),
            "--key-openai" => ko = Some(value()?),
            "--key-gemini" => kg = Some(value()?),
            "--reply" => reply = Some(value()?),
            "--log" => log = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    let (Some(ca_out), Some(ka), Some(ko), Some(kg), Some(reply)) = (ca_out, ka, ko, kg, reply)
    else {
        bail!(USAGE);
    };
    let log = match log {
        Some(p) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .with_context(|| format!("opening {}", p.display()))?,
        ))),
        None => None,
    };

    let ca = moat_testkit::TestCa::new()?;
    std::fs::write(&ca_out, ca.pem()).with_context(|| format!("writing {}", ca_out.display()))?;
    let wrap = |host: &'static str, inner: Handler| -> Handler {
        let log = log.clone();
        Arc::new(move |seen: &Seen| {
            let reply = inner(seen);
            eprintln!("{host} {} {} -> {}", seen.method, seen.path, reply.0);
            if let Some(log) = &log {
                let line = serde_json::json!({
                    "host": host,
                    "method": seen.method,
                    "path": seen.path,
                    "headers": seen.headers,
                    "body": String::from_utf8_lossy(&seen.body),
                    "status": reply.0,
                });
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            reply
        })
    };
    let standins = AgentStandins::start(&ca, [&ka, &ko, &kg], &reply, wrap)?;
    println!("MOAT_RESOLVE={}", standins.resolve());
    for (host, addr) in standins.addrs() {
        eprintln!("{host}: direct https://localhost:{}", addr.port());
    }
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
