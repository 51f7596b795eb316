//! `moat grant aws --role ARN`: prove the host can assume the role, then
//! store the role's configuration (never a key).

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use secrecy::SecretString;

use super::GrantArgs;
use crate::aws::role::{self, Inject, RoleConfig};
use crate::aws::sdk;
use crate::net::Upstream;
use crate::store::Credential;

pub fn obtain(args: &GrantArgs) -> Result<Credential> {
    let role_arn = args.role.as_deref().ok_or_else(|| {
        anyhow!(
            "moat grant aws needs the IAM role to assume: --role ARN, e.g. moat grant aws --role arn:aws:iam::123456789012:role/AgentRole"
        )
    })?;
    let saved_nothing = |e: String| anyhow!("{e}. Nothing was saved");
    let role_arn = role::parse_role_arn(role_arn.trim()).map_err(saved_nothing)?;
    let duration = match &args.session_duration {
        Some(d) => role::parse_duration(d).map_err(saved_nothing)?,
        None => role::DEFAULT_DURATION,
    };
    let inject = match &args.inject {
        Some(m) => Inject::parse(m).map_err(saved_nothing)?,
        None => Inject::default(),
    };
    // The profile is stored, so runs assume the role as the same identity
    // whatever their own environment says.
    let profile = args
        .aws_profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .filter(|p| !p.trim().is_empty());
    let role = RoleConfig {
        role_arn,
        region: args.region.clone().filter(|r| !r.trim().is_empty()),
        duration,
        external_id: args.external_id.clone().filter(|e| !e.is_empty()),
        profile,
        inject,
    };
    eprintln!("Assuming role: {}", role.role_arn);
    if let Some(r) = &role.region {
        eprintln!("Region: {r}");
    }
    eprintln!("Session duration: {}", role::format_duration(role.duration));
    let upstream = Arc::new(Upstream::from_env()?);
    super::super::block_on(async {
        let conf =
            sdk::host_config(upstream, role.profile.as_deref(), role.region.as_deref()).await;
        sdk::check_host_credentials(&conf, role.profile.as_deref()).await?;
        sdk::assume_role(&conf, &role, "moat-grant").await
    })
    .context("starting the AWS client")?
    .map_err(|e| saved_nothing(e.to_string()))?;
    eprintln!("Role assumed successfully");
    if inject == Inject::Sigv4 {
        eprintln!("Runs re-sign AWS requests in the proxy: the sandbox gets placeholder keys only");
    }
    let source = match &role.profile {
        Some(p) => format!("sts:assume-role (profile {p})"),
        None => "sts:assume-role".to_owned(),
    };
    let mut cred = Credential::new_static("aws", SecretString::from(role.role_arn.clone()), source);
    cred.metadata = role.to_metadata();
    Ok(cred)
}
