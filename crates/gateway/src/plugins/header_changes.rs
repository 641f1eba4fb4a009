//! Header changes as `proxy-rewrite` and `response-rewrite` configure them
//! (`model::plugin::HeaderChanges`), compiled once into header names and values and
//! applied to a phase's edits: remove, set, add.

use http::{HeaderName, HeaderValue};

use crate::core::phase::HeaderEdits;

#[derive(Debug, Default)]
pub(crate) struct CompiledChanges {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

fn name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name}: not a header name"))
}

fn pair(n: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    Ok((
        name(n)?,
        HeaderValue::from_str(value).map_err(|_| format!("{n}: not a header value"))?,
    ))
}

impl CompiledChanges {
    pub(crate) fn compile(changes: &model::plugin::HeaderChanges) -> Result<Self, String> {
        Ok(Self {
            remove: changes
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: changes
                .set
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
            add: changes
                .add
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn apply(&self, edits: &mut HeaderEdits) {
        for name in &self.remove {
            edits.remove(name.clone());
        }
        for (name, value) in &self.set {
            edits.set(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            edits.add(name.clone(), value.clone());
        }
    }
}
