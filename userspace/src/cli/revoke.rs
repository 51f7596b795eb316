//! `moat revoke NAME`.

use anyhow::Result;
use clap::Args;

use super::Ctx;
use super::output::outln;
use crate::store::CredName;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  moat revoke github\n  moat revoke github:ghe.corp.test\n  moat revoke ssh:github.com\n  moat revoke mcp-context7 --profile work"
)]
pub struct RevokeArgs {
    /// Credential to delete (as shown by 'moat grant list')
    name: String,
}

pub fn run(ctx: &Ctx, args: RevokeArgs) -> Result<()> {
    let name = CredName::parse(&args.name)?;
    let store = ctx.store()?;
    store.delete(&name)?;
    if ctx.json {
        super::output::json(&serde_json::json!({ "name": name.as_str(), "revoked": true }))?;
    } else {
        outln!("Credential '{name}' revoked")?;
    }
    Ok(())
}
