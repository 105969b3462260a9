//! The `admission.k8s.io/v1` AdmissionReview as it travels over the wire: just the
//! fields Sidekey reads and writes.
//!
//! These are Sidekey's own types rather than kube-core's: kube-core 5 serializes the
//! patch as a JSON array of numbers instead of the documented base64 string, hides
//! `patchType`, and pulls in k8s-openapi and a second json-patch major version.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::patch::{self, Decision, PatchSettings, SkipReason};
use sidekey_agent::contract::compat;

/// The review API version this webhook is registered for.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The `v1beta1` review has the same shape for the fields used here; it is accepted so
/// that a configuration still listing it keeps working, and answered in kind.
pub const API_VERSION_V1BETA1: &str = "admission.k8s.io/v1beta1";
const KIND: &str = "AdmissionReview";

/// Why a request body is not a review this webhook can answer. Messages never quote the
/// body, which may hold a pod's environment values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or JSON whose fields have the wrong types.
    #[error(
        "request body is not a JSON AdmissionReview: {category} error at line {line}, column {column}"
    )]
    Json {
        category: &'static str,
        line: usize,
        column: usize,
    },
    /// `apiVersion`/`kind` are not an `admission.k8s.io/v1` AdmissionReview.
    #[error("request body is not an AdmissionReview of {API_VERSION} (check apiVersion and kind)")]
    WrongKind,
    /// The review has no `request` object.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// The request has no (or an empty) `uid`, so no response could be matched to it.
    #[error("AdmissionReview request has no uid")]
    NoUid,
    /// The JSON patch could not be serialized.
    #[error("cannot serialize the JSON patch")]
    Encode(#[source] serde_json::Error),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An incoming review, validated: it has a request and the request has a uid.
#[derive(Debug)]
pub struct Review {
    /// The review's `apiVersion`, echoed in the response.
    pub api_version: String,
    /// The request, with a non-empty uid.
    pub request: Request,
}

/// The fields of `AdmissionRequest` Sidekey uses. `Debug` leaves out the object, whose
/// environment values may be secrets.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Identifies this review; echoed in the response.
    #[serde(default)]
    pub uid: String,
    /// Kind of the object, e.g. `{"group":"","version":"v1","kind":"Pod"}`.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Set when the request targets a subresource such as `pods/ephemeralcontainers`.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Object name; empty on CREATE with `generateName`.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace of the object; absent for cluster-scoped kinds.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object being admitted (absent on DELETE).
    #[serde(default)]
    pub object: Option<Value>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("uid", &self.uid)
            .field("kind", &self.kind)
            .field("sub_resource", &self.sub_resource)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("operation", &self.operation)
            .field("object", &self.object.as_ref().map(|_| "[OMITTED]"))
            .finish()
    }
}

/// A Kubernetes group/version/kind triple; the core group is the empty string.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct GroupVersionKind {
    /// API group; `""` for the core group (pods).
    #[serde(default)]
    pub group: String,
    /// API version within the group, e.g. `v1`.
    #[serde(default)]
    pub version: String,
    /// Kind, e.g. `Pod`.
    #[serde(default)]
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<Request>,
}

/// Parses a request body into a [`Review`].
///
/// # Errors
///
/// See [`Error`]; each is answered with HTTP 400.
pub fn parse(body: &[u8]) -> Result<Review> {
    let raw: RawReview = serde_json::from_slice(body).map_err(|e| Error::Json {
        category: match e.classify() {
            serde_json::error::Category::Io => "read",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "type",
            serde_json::error::Category::Eof => "truncated input",
        },
        line: e.line(),
        column: e.column(),
    })?;
    if raw.kind != KIND
        || !(raw.api_version == API_VERSION || raw.api_version == API_VERSION_V1BETA1)
    {
        return Err(Error::WrongKind);
    }
    let request = raw.request.ok_or(Error::NoRequest)?;
    if request.uid.is_empty() {
        return Err(Error::NoUid);
    }
    Ok(Review {
        api_version: raw.api_version,
        request,
    })
}

impl Request {
    /// Whether this is the creation of a core/v1 Pod (not of one of its subresources).
    pub fn is_pod_create(&self) -> bool {
        self.operation == "CREATE"
            && self.kind.group.is_empty()
            && self.kind.version == "v1"
            && self.kind.kind == "Pod"
            && self.sub_resource.as_deref().is_none_or(str::is_empty)
    }

    /// The pod's name, or its `generateName` prefix when the name is not chosen yet.
    pub fn display_name(&self) -> &str {
        match self.name.as_deref() {
            Some(name) if !name.is_empty() => name,
            _ => self
                .object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/generateName"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        }
    }
}

impl Request {
    /// The namespace of the request, else of the object (the API server always sets
    /// the former for a namespaced kind).
    pub fn target_namespace(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => self
                .object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/namespace"))
                .and_then(Value::as_str)
                .unwrap_or(""),
        }
    }
}

/// Decides on a review: only Pod CREATE outside the excluded namespaces goes to
/// [`patch::mutate`], anything else is admitted unchanged.
pub fn decide(request: &Request, settings: &PatchSettings) -> Decision {
    if !request.is_pod_create() {
        return Decision::Skip(SkipReason::NotPodCreate);
    }
    if settings
        .excluded_namespaces
        .contains(request.target_namespace())
    {
        return Decision::Skip(SkipReason::ExcludedNamespace);
    }
    match &request.object {
        Some(pod) => patch::mutate(pod, settings),
        None => Decision::Deny("the Pod CREATE review carries no object".to_owned()),
    }
}

/// The AdmissionReview sent back.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    /// The request's `apiVersion`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: &'static str,
    /// The answer.
    pub response: Response,
}

/// The `response` of an AdmissionReview.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request's `uid`; the API server matches the answer by it.
    pub uid: String,
    /// Whether the object may be created.
    pub allowed: bool,
    /// `JSONPatch` when [`Response::patch`] is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Standard (not URL-safe) base64 of the JSON patch; the API server rejects other
    /// encodings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Set on denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Shown to the person creating the pod (kubectl prints them): incumbent
    /// annotations accepted but ignored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why a request was refused; `message` is shown to the user by the API server.
#[derive(Debug, Serialize)]
pub struct Status {
    /// HTTP-style code; 403 for a denial.
    pub code: u16,
    /// What the person creating the pod reads.
    pub message: String,
    /// Machine-readable reason (`Forbidden`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// What the translation of the pod's `vault.hashicorp.com/` or `openbao.org/`
/// annotations accepted but ignores, one warning per key.
fn translation_warnings(review: &Review) -> Vec<String> {
    let annotations: std::collections::BTreeMap<String, String> = review
        .request
        .object
        .as_ref()
        .and_then(|o| o.pointer("/metadata/annotations"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    if !compat::uses_foreign_prefix(&annotations) {
        return Vec::new();
    }
    compat::translate(&annotations)
        .map(|(_, warnings)| warnings)
        .unwrap_or_default()
}

/// Wraps `decision` in the response to `review`, echoing its `apiVersion` and `uid`.
///
/// # Errors
///
/// [`Error::Encode`] if the patch cannot be serialized (not expected in practice).
pub fn respond(review: &Review, decision: &Decision) -> Result<ReviewResponse> {
    let uid = review.request.uid.clone();
    let response = match decision {
        Decision::Skip(_) => Response {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
        },
        Decision::Patch(patch) => {
            let bytes = serde_json::to_vec(patch).map_err(Error::Encode)?;
            Response {
                uid,
                allowed: true,
                patch_type: Some("JSONPatch"),
                patch: Some(STANDARD.encode(bytes)),
                status: None,
                warnings: translation_warnings(review),
            }
        }
        Decision::Deny(message) => Response {
            uid,
            allowed: false,
            patch_type: None,
            patch: None,
            status: Some(Status {
                code: 403,
                message: message.clone(),
                reason: Some("Forbidden"),
            }),
            warnings: Vec::new(),
        },
    };
    Ok(ReviewResponse {
        api_version: review.api_version.clone(),
        kind: KIND,
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, operation: &str, sub_resource: Option<&str>) -> Request {
        Request {
            uid: "u".into(),
            kind: GroupVersionKind {
                group: if kind == "Deployment" { "apps" } else { "" }.into(),
                version: "v1".into(),
                kind: kind.into(),
            },
            sub_resource: sub_resource.map(str::to_owned),
            name: None,
            namespace: None,
            operation: operation.into(),
            object: None,
        }
    }

    #[test]
    fn only_a_pod_create_is_a_pod_create() {
        assert!(request("Pod", "CREATE", None).is_pod_create());
        assert!(request("Pod", "CREATE", Some("")).is_pod_create());
        assert!(!request("Pod", "UPDATE", None).is_pod_create());
        assert!(!request("Pod", "CREATE", Some("ephemeralcontainers")).is_pod_create());
        assert!(!request("Deployment", "CREATE", None).is_pod_create());
    }

    #[test]
    fn parse_errors_do_not_quote_the_body() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"spec":{"containers":[{"env":[{"value":"hunter2"}]}]}},"operation":5}}"#;
        let err = parse(body).expect_err("operation is not a string");
        assert!(
            matches!(
                err,
                Error::Json {
                    category: "type",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_leaves_out_the_pod_and_its_environment_values() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":{"spec":{"containers":[{"env":[{"name":"P","value":"hunter2"}]}]}}}}"#;
        let review = parse(body).expect("a review");
        let debug = format!("{review:?} {review:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("uid: \"u\""), "{debug}");
    }

    #[test]
    fn display_name_falls_back_to_generate_name() {
        let mut r = request("Pod", "CREATE", None);
        r.object = Some(serde_json::json!({ "metadata": { "generateName": "web-" } }));
        assert_eq!(r.display_name(), "web-");
        r.name = Some("web-1".into());
        assert_eq!(r.display_name(), "web-1");
    }

    #[test]
    fn pods_in_excluded_namespaces_are_left_alone() {
        let pod = serde_json::json!({
            "metadata": { "annotations": { "sidekey.dev/inject": "true" } },
            "spec": { "containers": [{ "name": "app" }] },
        });
        let settings = PatchSettings {
            excluded_namespaces: ["kube-system".to_owned(), "sidekey".to_owned()].into(),
            ..PatchSettings::default()
        };
        for ns in ["kube-system", "sidekey"] {
            let mut r = request("Pod", "CREATE", None);
            r.namespace = Some(ns.into());
            r.object = Some(pod.clone());
            assert!(
                matches!(
                    decide(&r, &settings),
                    Decision::Skip(SkipReason::ExcludedNamespace)
                ),
                "{ns}"
            );
        }
        // Falls back to the object's namespace; elsewhere the pod is considered (and
        // here denied for its missing role).
        let mut r = request("Pod", "CREATE", None);
        let mut in_ns = pod.clone();
        in_ns["metadata"]["namespace"] = "sidekey".into();
        r.object = Some(in_ns);
        assert!(matches!(
            decide(&r, &settings),
            Decision::Skip(SkipReason::ExcludedNamespace)
        ));
        r.namespace = Some("apps".into());
        r.object = Some(pod);
        assert!(matches!(decide(&r, &settings), Decision::Deny(_)));
    }

    #[test]
    fn ignored_incumbent_annotations_come_back_as_warnings() {
        let pod = serde_json::json!({
            "metadata": { "annotations": {
                "vault.hashicorp.com/agent-inject": "true",
                "vault.hashicorp.com/role": "app",
                "vault.hashicorp.com/agent-inject-secret-db": "kv/db",
                "vault.hashicorp.com/log-level": "debug",
            } },
            "spec": { "containers": [{ "name": "app", "image": "x" }] },
        });
        let settings = PatchSettings {
            agent_image: "agent:1".into(),
            defaults: sidekey_agent::contract::annotations::Defaults {
                vault_addr: "https://vault:8200".into(),
                vault_ca_pem: None,
            },
            ..PatchSettings::default()
        };
        let mut r = request("Pod", "CREATE", None);
        r.object = Some(pod);
        let decision = decide(&r, &settings);
        assert!(matches!(decision, Decision::Patch(_)), "{decision:?}");
        let review = Review {
            api_version: "admission.k8s.io/v1".into(),
            request: r,
        };
        let json = serde_json::to_value(respond(&review, &decision).unwrap()).unwrap();
        let warnings = json["response"]["warnings"].as_array().expect("warnings");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].as_str().unwrap().contains("log-level"));
    }
}
