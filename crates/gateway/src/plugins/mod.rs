//! The plugins, each written once against the core's phase interface
//! (`core::phase`) and run by both engines. [`chain`] builds a route's chain from its
//! config; every plugin's config was validated by `model` when it was written.

mod ip_restriction;
mod redirect;
mod request_id;

use std::sync::Arc;

use model::route::Plugins;

use crate::core::phase::{Chain, Plugin};

pub use ip_restriction::IpRestriction;
pub use redirect::Redirect;
pub use request_id::RequestId;

/// The chain of a route's configured plugins; `Err` names the plugin whose config
/// cannot be compiled (validation runs the same parsers, so it should not happen).
pub fn chain(config: &Plugins) -> Result<Chain, String> {
    let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
    if let Some(ip) = &config.ip_restriction {
        plugins.push(Arc::new(IpRestriction::compile(ip)?));
    }
    if let Some(id) = &config.request_id {
        plugins.push(Arc::new(RequestId::compile(id)?));
    }
    if let Some(redirect) = &config.redirect {
        plugins.push(Arc::new(Redirect::compile(redirect)?));
    }
    Ok(Chain::new(plugins))
}
