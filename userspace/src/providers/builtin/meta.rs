//! Meta Graph API: Bearer on graph.facebook.com and graph.instagram.com. No
//! placeholder env var inside the sandbox.

use super::super::Provider;
use super::{header_provider, strings};

pub fn provider() -> Provider {
    let mut p = header_provider(
        "meta",
        "Meta",
        "Meta Graph API access token (optional app credentials for refresh)",
        &["graph.facebook.com", "graph.instagram.com"],
        "Authorization",
        "Bearer ",
    );
    p.source_env = strings(&["META_ACCESS_TOKEN"]);
    p.prompt = Some(
        "Enter a Meta access token.\nTo create one:\n  1. Go to https://developers.facebook.com/tools/explorer/\n  2. Select your app and generate a token with the required permissions"
            .into(),
    );
    p
}
