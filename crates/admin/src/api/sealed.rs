//! Secrets in exported config files (`GET …/config?secrets=sealed`): certificate keys,
//! credentials' secrets and hashes travel sealed under the admin's data key
//! (AES-256-GCM, `secrets::Keyring`), so an export applied to an empty instance
//! reproduces it exactly, secrets included, while the file shows none of them.
//!
//! A sealed value is bound to the namespace, the object (kind and id) and the field it
//! was exported from: it opens only there, on an admin holding the data key, so a
//! file cannot carry a secret into another namespace or onto another object. Which
//! fields are secret is not listed here: it is what [`Resource::redacted`] removes.

use model::resource::{Resource, ResourceKind};
use model::validate::FieldError;
use serde_json::Value;

use crate::error::ApiError;
use crate::secrets::{Keyring, SecretError};

/// What a sealed value of an export is bound to.
fn context(namespace: &str, kind: ResourceKind, id: &str, field: &str) -> String {
    format!(
        "portico export v1\0{namespace}\0{}\0{id}\0{field}",
        kind.as_str()
    )
}

/// The object as an export shows it: redacted, with each secret the redaction removed
/// put back sealed.
pub(super) fn sealed(
    keyring: &Keyring,
    namespace: &str,
    resource: &Resource,
) -> Result<Resource, ApiError> {
    let (kind, id) = (resource.kind(), resource.id().to_owned());
    let full = resource.to_json();
    let shown = resource.redacted().to_json();
    let mut seal = |field: &str, plain: &str| {
        keyring
            .seal(&context(namespace, kind, &id, field), plain)
            .map_err(|e| match e {
                SecretError::NoKey => ApiError::NoDataKey {
                    field: format!("{}[{id}]{field}", kind.as_str()),
                },
                other => ApiError::Internal(anyhow::anyhow!("sealing an export: {other}")),
            })
    };
    let mut field = String::new();
    let value = put_back(&full, &shown, &mut field, &mut seal)?;
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::Internal(e.into()))?;
    kind.parse(&bytes).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("a sealed {kind:?} does not read back: {e}"))
    })
}

/// `shown` with every string `full` has and `shown` lacks, sealed, at its field path
/// (`.credentials[0].secret`).
fn put_back(
    full: &Value,
    shown: &Value,
    field: &mut String,
    seal: &mut impl FnMut(&str, &str) -> Result<String, ApiError>,
) -> Result<Value, ApiError> {
    match (full, shown) {
        (Value::Object(full), Value::Object(shown)) => {
            let mut out = shown.clone();
            for (name, value) in full {
                let len = field.len();
                field.push('.');
                field.push_str(name);
                match (shown.get(name), value.as_str()) {
                    (None, Some(plain)) => {
                        out.insert(name.clone(), Value::String(seal(field, plain)?));
                    }
                    (Some(kept), _) => {
                        out.insert(name.clone(), put_back(value, kept, field, seal)?);
                    }
                    (None, None) => {}
                }
                field.truncate(len);
            }
            Ok(Value::Object(out))
        }
        (Value::Array(full), Value::Array(shown)) if full.len() == shown.len() => full
            .iter()
            .zip(shown)
            .enumerate()
            .map(|(i, (value, kept))| {
                let len = field.len();
                field.push_str(&format!("[{i}]"));
                let out = put_back(value, kept, field, seal);
                field.truncate(len);
                out
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Ok(shown.clone()),
    }
}

/// Opens every sealed value of a config file (one instance's `config`) in place; each
/// that does not open here is named by its field under `prefix`
/// (`certificates[c1].key`).
pub(super) fn open_all(
    keyring: &Keyring,
    namespace: &str,
    config: &mut Value,
    prefix: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(file) = config.as_object_mut() else {
        return errors;
    };
    for (name, objects) in file.iter_mut() {
        let Ok(kind) = name.parse::<ResourceKind>() else {
            continue;
        };
        let Some(objects) = objects.as_array_mut() else {
            continue;
        };
        for object in objects {
            let Some(id) = object.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let mut open = |field: &str, sealed: &str| {
                keyring
                    .open(&context(namespace, kind, &id, field), sealed)
                    .map_err(|e| FieldError {
                        field: format!("{prefix}{}[{id}]{field}", kind.as_str()),
                        message: format!(
                            "a sealed value that does not open here ({e}); it opens only on \
                             the object, field and namespace it was exported from, on an \
                             admin holding its data key"
                        ),
                    })
            };
            open_in(object, &mut String::new(), &mut open, &mut errors);
        }
    }
    errors
}

fn open_in(
    value: &mut Value,
    field: &mut String,
    open: &mut impl FnMut(&str, &str) -> Result<String, FieldError>,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::String(text) if Keyring::is_sealed(text) => match open(field, text) {
            Ok(plain) => *text = plain,
            Err(e) => errors.push(e),
        },
        Value::Object(map) => {
            for (name, inner) in map.iter_mut() {
                let len = field.len();
                field.push('.');
                field.push_str(name);
                open_in(inner, field, open, errors);
                field.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter_mut().enumerate() {
                let len = field.len();
                field.push_str(&format!("[{i}]"));
                open_in(inner, field, open, errors);
                field.truncate(len);
            }
        }
        _ => {}
    }
}
