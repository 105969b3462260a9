//! Go text/template templates with the consul-template functions people use in Vault
//! Agent Injector annotations, on the [`gotmpl`] engine (Go's semantics: map keys in
//! sorted order, `%q`, `{{-`/`-}}` trimming, `printf`, `index`, variables, pipelines).
//!
//! Go templates cannot wait for Vault, so a template is executed against what has been
//! fetched so far, the way consul-template does it: `secret` returns the secret when it
//! is in the given set, and otherwise records it as missing and returns nothing (so a
//! `with secret ...` block is skipped). The agent fetches the missing sources and
//! executes again; a secret whose path comes from another secret's data shows up only
//! in a later round, so at most [`MAX_ROUNDS`] rounds are made. The sources a template
//! reads are [`source::Key`]s like those of every other secret, so the lease scheduler
//! fetches each once: a template that reads one dynamic credential twice gets one lease.
//!
//! `secret` returns consul-template's shape: `.Data` (the response's `data`, which for
//! KV version 2 holds `data` and `metadata`, hence `.Data.data.password`), `.LeaseID`,
//! `.LeaseDuration`, `.Renewable`, `.RequestID` (always empty) and `.Warnings`. With
//! `key=value` arguments (`secret "pki/issue/web" "common_name=a.example"`) it is a
//! write, like a `params-<name>` annotation. `pkiCert` is the same write and returns
//! `.Cert`, `.Key`, `.CA` and `.CAChain` (PEM blocks ending in a newline).
//!
//! Unlike Go's default, a missing map key is an error naming the template, the secret
//! and the key, never a silent `<no value>`. Errors never contain secret values.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use gotmpl::{MissingKey, TemplateError, Value};
use serde_json::Value as Json;

use crate::{source::Key, vault::SecretResponse};

/// Most execution rounds for one template: secrets whose paths come from other
/// secrets' data, nested this deep at most.
pub const MAX_ROUNDS: usize = 4;

/// Most bytes one execution may produce, counted twice over: its output, and
/// separately the strings its functions return along the way. Go templates can double
/// a string per action (`$x = printf "%s%s" $x $x`) or nest ranges, so without a bound
/// a short template would exhaust the agent's memory; past it the render fails with
/// an error that says so.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

/// Longest template accepted, in bytes (a Kubernetes annotation value may be larger,
/// but a file this big is not a template any more).
pub const MAX_TEMPLATE_LEN: usize = 64 * 1024;

/// Why a template could not be parsed or rendered. Messages name the template, and
/// where known the secret path and key; never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Syntax error; the message carries line and column.
    #[error("template {template:?}: {message}")]
    Parse { template: String, message: String },
    /// A map key the template reads does not exist.
    #[error(
        "template {template:?}: secret {path:?} has no key {key:?} (the template reads it; \
         check the key's spelling, and .Data.data for KV version 2)"
    )]
    MissingKey {
        template: String,
        /// The secret read last before the failing action.
        path: String,
        key: String,
    },
    /// A map key was missing before any secret was read.
    #[error("template {template:?}: no key {key:?} (no secret had been read yet)")]
    MissingKeyOutsideSecret { template: String, key: String },
    /// Any other execution error (bad arguments, type mismatch, failing function).
    #[error("template {template:?}: {message}{}", after(path))]
    Execute {
        template: String,
        path: Option<String>,
        message: String,
    },
    /// Still missing secrets after [`MAX_ROUNDS`] rounds (paths computed from data
    /// nested too deep), or rendered without a secret it needs.
    #[error("template {template:?}: secrets not fetched: {}", paths.join(", "))]
    Unresolved {
        template: String,
        paths: Vec<String>,
    },
}

fn after(path: &Option<String>) -> String {
    path.as_ref()
        .map(|p| format!(" (after reading secret {p:?})"))
        .unwrap_or_default()
}

/// A fetched source as a template sees it.
#[derive(Clone)]
pub struct Fetched {
    /// The response's `data`, whole (for KV version 2, `data` and `metadata`).
    pub data: Json,
    pub lease_id: String,
    pub lease_duration: u64,
    pub renewable: bool,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("lease_id", &self.lease_id)
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}

impl From<&SecretResponse> for Fetched {
    fn from(r: &SecretResponse) -> Self {
        Fetched {
            data: r.data.expose().clone(),
            lease_id: r.lease_id.clone(),
            lease_duration: r.lease_duration,
            renewable: r.renewable,
        }
    }
}

/// A parsed template.
#[derive(Clone)]
pub struct Template {
    name: String,
    text: Arc<str>,
    delims: Option<(String, String)>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What one execution saw. `Debug` shows the output's size, never its bytes.
pub struct Execution {
    /// Every source the execution asked for, in order of first use.
    pub used: Vec<Key>,
    /// Those not in the given set: fetch them and execute again.
    pub missing: Vec<Key>,
    /// The output; meaningful only when nothing is missing.
    pub output: Result<Vec<u8>, Error>,
}

impl fmt::Debug for Execution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let output: Result<usize, &Error> = self.output.as_ref().map(Vec::len);
        f.debug_struct("Execution")
            .field("used", &self.used)
            .field("missing", &self.missing)
            .field("output_len", &output)
            .finish()
    }
}

/// Parses `text` as the template `name` (used in every error).
pub fn parse(name: &str, text: &str) -> Result<Template, Error> {
    parse_with_delims(name, text, None)
}

/// Parses with custom delimiters (`agent-template-left-delim-<name>`), `None`: `{{ }}`.
pub fn parse_with_delims(
    name: &str,
    text: &str,
    delims: Option<(&str, &str)>,
) -> Result<Template, Error> {
    if text.len() > MAX_TEMPLATE_LEN {
        return Err(Error::Parse {
            template: name.to_owned(),
            message: format!("longer than {MAX_TEMPLATE_LEN} bytes"),
        });
    }
    let t = Template {
        name: name.to_owned(),
        text: Arc::from(text),
        delims: delims.map(|(l, r)| (l.to_owned(), r.to_owned())),
    };
    // Parse once now so syntax errors surface at configuration time; functions must
    // be known to the parser, so this registers them with an empty context.
    t.build(Arc::new(Mutex::new(Context::default())))?;
    Ok(t)
}

/// The "map" default template of the Vault Agent Injector for a path: one
/// `key: value` line per key of the response's data, values in Go's `%v` format
/// (for KV version 2: `data: map[...]` and `metadata: map[...]`).
pub fn default_map(path: &str) -> String {
    crate::contract::compat::default_map_template(path)
}

/// The "json" default template of the Vault Agent Injector: the response's data as
/// compact JSON and a newline.
pub fn default_json(path: &str) -> String {
    crate::contract::compat::default_json_template(path)
}

/// State shared between one execution and its `secret` function.
#[derive(Default)]
struct Context {
    have: BTreeMap<Key, Value>,
    used: Vec<Key>,
    missing: Vec<Key>,
    /// The last secret returned, to name it in a missing-key error.
    last_path: Option<String>,
    /// Bytes of the strings functions returned so far ([`MAX_RENDERED_BYTES`]).
    produced: usize,
}

impl Template {
    /// The template's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Executes against `have`, recording what it reads; see [`Execution`].
    pub fn execute(&self, have: &BTreeMap<Key, Fetched>) -> Execution {
        NUMBERS.with(|n| n.borrow_mut().clear());
        let run = self.execute_inner(have);
        NUMBERS.with(|n| n.borrow_mut().clear());
        run
    }

    fn execute_inner(&self, have: &BTreeMap<Key, Fetched>) -> Execution {
        let ctx = Context {
            have: have
                .iter()
                .map(|(k, f)| (k.clone(), secret_value(f)))
                .collect(),
            ..Context::default()
        };
        let ctx = Arc::new(Mutex::new(ctx));
        let output = self.build(Arc::clone(&ctx)).and_then(|t| {
            let mut out = Bounded::default();
            match t.execute_fmt(&mut out, &Value::Nil) {
                Ok(()) => Ok(out.out.into_bytes()),
                Err(_) if out.full => Err(Error::Execute {
                    template: self.name.clone(),
                    path: None,
                    message: format!("the output is larger than {MAX_RENDERED_BYTES} bytes"),
                }),
                Err(e) => Err(self.exec_error(e, &ctx)),
            }
        });
        let ctx = std::mem::take(&mut *lock(&ctx));
        Execution {
            used: ctx.used,
            missing: ctx.missing,
            output,
        }
    }

    /// The sources a render reads given `have`: call with what has been fetched so
    /// far, fetch what is new, repeat (at most [`MAX_ROUNDS`] times).
    pub fn dependencies(&self, have: &BTreeMap<Key, Fetched>) -> Vec<Key> {
        self.execute(have).used
    }

    /// Renders from `have`, which must hold every source the template reads.
    pub fn render(&self, have: &BTreeMap<Key, Fetched>) -> Result<Vec<u8>, Error> {
        let e = self.execute(have);
        if !e.missing.is_empty() {
            return Err(self.unresolved(&e.missing));
        }
        e.output
    }

    /// The error for sources still missing.
    pub fn unresolved(&self, missing: &[Key]) -> Error {
        Error::Unresolved {
            template: self.name.clone(),
            paths: missing.iter().map(describe).collect(),
        }
    }

    /// Resolves and renders with a synchronous `fetch` (tests, tools): executes,
    /// fetches what is missing, and again, for at most [`MAX_ROUNDS`] rounds.
    pub fn resolve<E>(
        &self,
        have: &mut BTreeMap<Key, Fetched>,
        mut fetch: impl FnMut(&Key) -> Result<Fetched, E>,
    ) -> Result<Result<Vec<u8>, Error>, E> {
        for _ in 0..MAX_ROUNDS {
            let e = self.execute(have);
            if e.missing.is_empty() {
                return Ok(e.output);
            }
            for key in e.missing {
                let f = fetch(&key)?;
                have.insert(key, f);
            }
        }
        let e = self.execute(have);
        if e.missing.is_empty() {
            Ok(e.output)
        } else {
            Ok(Err(self.unresolved(&e.missing)))
        }
    }

    fn build(&self, ctx: Arc<Mutex<Context>>) -> Result<gotmpl::Template, Error> {
        let mut t = gotmpl::Template::new(&self.name)
            .missing_key(MissingKey::Error)
            .max_range_iters(1_000_000);
        if let Some((l, r)) = &self.delims {
            t = t.delims(l, r);
        }
        let c = Arc::clone(&ctx);
        t = t.func("secret", move |args| secret_fn(&c, args, false));
        let c = Arc::clone(&ctx);
        t = t.func("pkiCert", move |args| secret_fn(&c, args, true));
        // Every function that makes a new string counts it against the budget,
        // gotmpl's own print functions and escapers included.
        let builtins: [(&'static str, Helper); 5] = [
            ("print", |a| builtin("print", a)),
            ("println", |a| builtin("println", a)),
            ("html", |a| builtin("html", a)),
            ("js", |a| builtin("js", a)),
            ("urlquery", |a| builtin("urlquery", a)),
        ];
        let printf: (&'static str, Helper) = ("printf", printf);
        for (name, f) in helpers().into_iter().chain(builtins).chain([printf]) {
            let c = Arc::clone(&ctx);
            t = t.func(name, move |args| {
                // Refused before the call too: one call with many large arguments
                // (`print $x $x $x ...`) would otherwise allocate them all first.
                let given: usize = args.iter().filter_map(Value::as_str).map(str::len).sum();
                if lock(&c).produced.saturating_add(given) > MAX_RENDERED_BYTES {
                    return Err(exec(format!(
                        "{name}: the template made more than {MAX_RENDERED_BYTES} bytes of text"
                    )));
                }
                let v = f(args)?;
                if let Value::String(s) = &v {
                    let mut c = lock(&c);
                    c.produced = c.produced.saturating_add(s.len());
                    if c.produced > MAX_RENDERED_BYTES {
                        return Err(exec(format!(
                            "{name}: the template made more than {MAX_RENDERED_BYTES} bytes of text"
                        )));
                    }
                }
                Ok(v)
            });
        }
        t.parse(&self.text).map_err(|e| Error::Parse {
            template: self.name.clone(),
            message: e.to_string(),
        })
    }

    fn exec_error(&self, e: TemplateError, ctx: &Arc<Mutex<Context>>) -> Error {
        let path = lock(ctx).last_path.clone();
        match (e, path) {
            (TemplateError::MissingKey { key }, Some(path)) => Error::MissingKey {
                template: self.name.clone(),
                path,
                key,
            },
            (TemplateError::MissingKey { key }, None) => Error::MissingKeyOutsideSecret {
                template: self.name.clone(),
                key,
            },
            (e, path) => Error::Execute {
                template: self.name.clone(),
                path,
                message: e.to_string(),
            },
        }
    }
}

fn lock(ctx: &Mutex<Context>) -> std::sync::MutexGuard<'_, Context> {
    // A panic inside a template function is caught by gotmpl; the context stays usable.
    ctx.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A source for messages: the path, and parameter names (values can be long).
fn describe(key: &Key) -> String {
    if key.params.is_empty() {
        key.path.clone()
    } else {
        let names: Vec<&str> = key.params.keys().map(String::as_str).collect();
        format!("{} (write: {})", key.path, names.join(", "))
    }
}

fn exec(msg: impl Into<String>) -> TemplateError {
    TemplateError::Exec(msg.into())
}

/// `secret "path" ["k=v" ...]` and `pkiCert "path" "k=v" ...`.
fn secret_fn(ctx: &Mutex<Context>, args: &[Value], pki: bool) -> gotmpl::Result<Value> {
    let func = if pki { "pkiCert" } else { "secret" };
    let Some(path) = args.first() else {
        return Err(exec(format!("{func} needs a path")));
    };
    let Some(path) = path.as_str() else {
        return Err(exec(format!(
            "{func}: the path must be a string, not {}",
            path.type_name()
        )));
    };
    let path = path.trim().trim_matches('/');
    if path.is_empty() {
        return Err(exec(format!("{func}: the path is empty")));
    }
    let mut params = BTreeMap::new();
    for a in &args[1..] {
        let Some(s) = a.as_str() else {
            return Err(exec(format!(
                "{func} {path:?}: parameters must be \"key=value\" strings"
            )));
        };
        if s.is_empty() {
            continue;
        }
        let Some((k, v)) = s.split_once('=') else {
            // The text may be a value; name only its position.
            return Err(exec(format!(
                "{func} {path:?}: a parameter is not key=value"
            )));
        };
        params.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let key = Key {
        path: path.to_owned(),
        params,
    };
    let mut c = lock(ctx);
    if !c.used.contains(&key) {
        c.used.push(key.clone());
    }
    match c.have.get(&key).cloned() {
        Some(v) => {
            c.last_path = Some(path.to_owned());
            if pki { Ok(pki_value(&v)) } else { Ok(v) }
        }
        None => {
            if !c.missing.contains(&key) {
                c.missing.push(key);
            }
            Ok(Value::Nil)
        }
    }
}

fn map(entries: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    Value::Map(Arc::new(
        entries
            .into_iter()
            .map(|(k, v)| (Arc::from(k), v))
            .collect(),
    ))
}

fn string(s: impl AsRef<str>) -> Value {
    Value::String(Arc::from(s.as_ref()))
}

/// consul-template's `Secret` for a fetched source.
fn secret_value(f: &Fetched) -> Value {
    map([
        ("Data", from_json(&f.data)),
        ("LeaseDuration", Value::Int(f.lease_duration as i64)),
        ("LeaseID", string(&f.lease_id)),
        ("Renewable", Value::Bool(f.renewable)),
        ("RequestID", string("")),
        ("Warnings", Value::List(Arc::from(Vec::new()))),
    ])
}

/// consul-template's `pkiCert` result from an issue response.
fn pki_value(secret: &Value) -> Value {
    let data = secret.field("Data").cloned().unwrap_or(Value::Nil);
    let pem = |k: &str| match data.field(k).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => string(format!("{}\n", s.trim_end_matches('\n'))),
        _ => string(""),
    };
    let mut chain: Vec<Value> = Vec::new();
    if let Some(Value::List(items)) = data.field("ca_chain") {
        for item in items.iter() {
            if let Some(s) = item.as_str() {
                let v = string(format!("{}\n", s.trim_end_matches('\n')));
                if !chain.contains(&v) {
                    chain.push(v);
                }
            }
        }
    }
    let ca = pem("issuing_ca");
    if chain.is_empty() && ca.as_str().is_some_and(|s| !s.is_empty()) {
        chain.push(ca.clone());
    }
    map([
        ("CA", ca),
        ("CAChain", Value::List(Arc::from(chain))),
        ("Cert", pem("certificate")),
        ("Data", data.clone()),
        ("Key", pem("private_key")),
    ])
}

thread_local! {
    /// Addresses of the strings that stand for JSON numbers of secret data, during one
    /// execution (gotmpl calls functions on the executing thread). The values holding
    /// them live as long as the execution, so an address cannot be reused meanwhile.
    static NUMBERS: std::cell::RefCell<std::collections::HashSet<usize>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

fn is_number(s: &Arc<str>) -> bool {
    let addr = Arc::as_ptr(s).cast::<u8>() as usize;
    NUMBERS.with(|n| n.borrow().contains(&addr))
}

/// Secret data as consul-template sees it: Vault's client decodes numbers as
/// `json.Number`, a string type, so they print, compare and `%q`-format as strings
/// while `toJSON` and `toYAML` still write them as numbers. Here a number becomes a
/// string whose address is remembered for the serializers.
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Number(n) => {
            let s: Arc<str> = Arc::from(n.to_string().as_str());
            NUMBERS.with(|set| {
                set.borrow_mut()
                    .insert(Arc::as_ptr(&s).cast::<u8>() as usize)
            });
            Value::String(s)
        }
        Json::Array(a) => Value::List(a.iter().map(from_json).collect::<Vec<_>>().into()),
        Json::Object(o) => Value::Map(Arc::new(
            o.iter()
                .map(|(k, v)| (Arc::from(k.as_str()), from_json(v)))
                .collect(),
        )),
        other => from_json_plain(other),
    }
}

/// JSON as Go's `json.Unmarshal` into `interface{}` gives it (`parseJSON`): numbers
/// are floats.
fn from_json_plain(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => string(s),
        Json::Array(a) => Value::List(a.iter().map(from_json_plain).collect::<Vec<_>>().into()),
        Json::Object(o) => Value::Map(Arc::new(
            o.iter()
                .map(|(k, v)| (Arc::from(k.as_str()), from_json_plain(v)))
                .collect(),
        )),
    }
}

type Helper = fn(&[Value]) -> gotmpl::Result<Value>;

fn helpers() -> [(&'static str, Helper); 19] {
    [
        ("toJSON", |a| {
            Ok(string(go_json(arg(a, 0, "toJSON")?, None)))
        }),
        ("toJSONPretty", |a| {
            Ok(string(go_json(arg(a, 0, "toJSONPretty")?, Some(""))))
        }),
        ("toUnescapedJSON", |a| {
            Ok(string(go_json_unescaped(arg(a, 0, "toUnescapedJSON")?)))
        }),
        ("toYAML", |a| Ok(string(yaml(arg(a, 0, "toYAML")?)))),
        ("base64Encode", |a| {
            let s = str_arg(a, 0, "base64Encode")?;
            Ok(string(
                base64::engine::general_purpose::STANDARD.encode(s.as_bytes()),
            ))
        }),
        ("base64Decode", |a| {
            decode(
                &base64::engine::general_purpose::STANDARD,
                str_arg(a, 0, "base64Decode")?,
                "base64Decode",
            )
        }),
        ("base64URLEncode", |a| {
            let s = str_arg(a, 0, "base64URLEncode")?;
            Ok(string(
                base64::engine::general_purpose::URL_SAFE.encode(s.as_bytes()),
            ))
        }),
        ("base64URLDecode", |a| {
            decode(
                &base64::engine::general_purpose::URL_SAFE,
                str_arg(a, 0, "base64URLDecode")?,
                "base64URLDecode",
            )
        }),
        ("trimSpace", |a| {
            Ok(string(str_arg(a, 0, "trimSpace")?.trim_matches(go_space)))
        }),
        ("trim", |a| {
            let cut = str_arg(a, 0, "trim")?;
            Ok(string(
                str_arg(a, 1, "trim")?.trim_matches(|c| cut.contains(c)),
            ))
        }),
        ("trimPrefix", |a| {
            let p = str_arg(a, 0, "trimPrefix")?;
            let s = str_arg(a, 1, "trimPrefix")?;
            Ok(string(s.strip_prefix(p).unwrap_or(s)))
        }),
        ("trimSuffix", |a| {
            let p = str_arg(a, 0, "trimSuffix")?;
            let s = str_arg(a, 1, "trimSuffix")?;
            Ok(string(s.strip_suffix(p).unwrap_or(s)))
        }),
        ("split", |a| {
            let sep = str_arg(a, 0, "split")?;
            let s = str_arg(a, 1, "split")?.trim_matches(go_space);
            if s.is_empty() {
                return Ok(Value::List(Arc::from(Vec::new())));
            }
            let parts: Vec<Value> = if sep.is_empty() {
                s.chars().map(|c| string(c.to_string())).collect()
            } else {
                s.split(sep).map(string).collect()
            };
            Ok(Value::List(parts.into()))
        }),
        ("join", |a| {
            let sep = str_arg(a, 0, "join")?;
            let Some(Value::List(items)) = a.get(1) else {
                return Err(exec("join: the second argument must be a list"));
            };
            let mut parts = Vec::with_capacity(items.len());
            for i in items.iter() {
                match i.as_str() {
                    Some(s) => parts.push(s),
                    None => return Err(exec("join: the list must hold strings")),
                }
            }
            Ok(string(parts.join(sep)))
        }),
        ("contains", |a| {
            // consul-template: `contains needle haystack`, for `{{ list | contains "x" }}`.
            let needle = arg(a, 0, "contains")?;
            let hay = arg(a, 1, "contains")?;
            Ok(Value::Bool(match hay {
                Value::List(items) => items.iter().any(|i| same(i, needle)),
                Value::String(s) => needle.as_str().is_some_and(|n| s.contains(n)),
                _ => false,
            }))
        }),
        ("replaceAll", |a| {
            let from = str_arg(a, 0, "replaceAll")?;
            let to = str_arg(a, 1, "replaceAll")?;
            let s = str_arg(a, 2, "replaceAll")?;
            Ok(string(go_replace_all(s, from, to)))
        }),
        ("toLower", |a| {
            Ok(string(str_arg(a, 0, "toLower")?.to_lowercase()))
        }),
        ("toUpper", |a| {
            Ok(string(str_arg(a, 0, "toUpper")?.to_uppercase()))
        }),
        ("parseJSON", |a| {
            let s = str_arg(a, 0, "parseJSON")?;
            if s.is_empty() {
                return Ok(map([]));
            }
            serde_json::from_str::<Json>(s)
                .map(|j| from_json_plain(&j))
                .map_err(|e| {
                    exec(format!(
                        "parseJSON: not JSON (line {}, column {})",
                        e.line(),
                        e.column()
                    ))
                })
        }),
    ]
}

/// Go's `fmt.Sprintf` as templates use it. gotmpl formats scalars like Go; for a list
/// or map argument Go applies the verb to each element (`%q` of `["a" "b"]` gives
/// `["a" "b"]`, of a map `map["k":"v"]`), which is done here before handing the rest to
/// gotmpl's own `printf`.
fn printf(args: &[Value]) -> gotmpl::Result<Value> {
    let fmt = str_arg(args, 0, "printf")?;
    let rest = &args[1..];
    if !rest
        .iter()
        .any(|a| matches!(a, Value::List(_) | Value::Map(_)))
    {
        return gotmpl_printf(fmt, rest).map(string);
    }
    let chars: Vec<char> = fmt.chars().collect();
    let (mut out_fmt, mut out_args, mut next) = (String::new(), Vec::new(), 0);
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '%' {
            out_fmt.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < chars.len() && "+-# 0123456789.".contains(chars[i]) {
            i += 1;
        }
        if i >= chars.len() {
            out_fmt.extend(&chars[start..]);
            break;
        }
        if chars[i] == '*' || chars[i] == '[' {
            // Argument indexes and star widths: leave everything to gotmpl.
            return gotmpl_printf(fmt, rest).map(string);
        }
        i += 1;
        let spec: String = chars[start..i].iter().collect();
        if spec == "%%" {
            out_fmt.push_str("%%");
            continue;
        }
        match rest.get(next) {
            Some(v @ (Value::List(_) | Value::Map(_))) if spec != "%v" => {
                out_fmt.push_str("%s");
                out_args.push(string(elementwise(&spec, v)?));
            }
            Some(v) => {
                out_fmt.push_str(&spec);
                out_args.push(v.clone());
            }
            None => out_fmt.push_str(&spec),
        }
        next += 1;
    }
    out_args.extend(rest.iter().skip(next).cloned());
    gotmpl_printf(&out_fmt, &out_args).map(string)
}

fn elementwise(spec: &str, v: &Value) -> gotmpl::Result<String> {
    match v {
        Value::List(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|x| elementwise(spec, x))
                .collect::<gotmpl::Result<_>>()?;
            Ok(format!("[{}]", parts.join(" ")))
        }
        Value::Map(m) => {
            let mut parts = Vec::with_capacity(m.len());
            for (k, x) in m.iter() {
                let key = elementwise(spec, &Value::String(Arc::clone(k)))?;
                parts.push(format!("{key}:{}", elementwise(spec, x)?));
            }
            Ok(format!("map[{}]", parts.join(" ")))
        }
        scalar => gotmpl_printf(spec, std::slice::from_ref(scalar)),
    }
}

/// gotmpl's built-in function `name`, through a one-line template like `printf`'s.
fn builtin(name: &str, args: &[Value]) -> gotmpl::Result<Value> {
    let mut text = format!("{{{{ {name}");
    for i in 0..args.len() {
        text.push_str(&format!(" (index .a {i})"));
    }
    text.push_str(" }}");
    let data = map([("a", Value::List(args.to_vec().into()))]);
    gotmpl::Template::new(name)
        .parse(&text)?
        .execute_to_string(&data)
        .map(string)
}

/// Output that refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Bounded {
    out: String,
    full: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.out.len() + s.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

/// gotmpl's built-in `printf`, reached through a one-line template (it is not
/// exported as a function).
fn gotmpl_printf(fmt: &str, args: &[Value]) -> gotmpl::Result<String> {
    let mut text = String::from("{{ printf .f");
    for i in 0..args.len() {
        text.push_str(&format!(" (index .a {i})"));
    }
    text.push_str(" }}");
    let data = map([("a", Value::List(args.to_vec().into())), ("f", string(fmt))]);
    gotmpl::Template::new("printf")
        .parse(&text)?
        .execute_to_string(&data)
}

/// Go's `strings.ReplaceAll`: an empty `from` inserts `to` around every character.
fn go_replace_all(s: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        let mut out = String::from(to);
        for c in s.chars() {
            out.push(c);
            out.push_str(to);
        }
        return out;
    }
    s.replace(from, to)
}

/// Go's `unicode.IsSpace`, which `strings.TrimSpace` uses.
fn go_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
    ) || (c as u32 > 0xff && c.is_whitespace())
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Uint(x), Value::Uint(y)) => x == y,
        (Value::Int(x), Value::Uint(y)) | (Value::Uint(y), Value::Int(x)) => {
            u64::try_from(*x).is_ok_and(|x| x == *y)
        }
        (Value::Float(x), Value::Float(y)) => x == y,
        _ => false,
    }
}

fn decode(engine: &impl base64::Engine, s: &str, func: &str) -> gotmpl::Result<Value> {
    let bytes = engine
        .decode(s.as_bytes())
        .map_err(|_| exec(format!("{func}: the input is not valid base64")))?;
    // Go strings may hold any bytes; a file gets them as they are. Text that is not
    // UTF-8 is kept by a lossless route only when valid, else refused.
    String::from_utf8(bytes)
        .map(string)
        .map_err(|_| exec(format!("{func}: the decoded bytes are not UTF-8 text")))
}

fn arg<'a>(a: &'a [Value], i: usize, func: &str) -> gotmpl::Result<&'a Value> {
    a.get(i).ok_or_else(|| TemplateError::ArgCount {
        name: func.to_owned(),
        expected: i + 1,
        got: a.len(),
    })
}

fn str_arg<'a>(a: &'a [Value], i: usize, func: &str) -> gotmpl::Result<&'a str> {
    let v = arg(a, i, func)?;
    v.as_str().ok_or_else(|| {
        exec(format!(
            "{func}: argument {} must be a string, not {}",
            i + 1,
            v.type_name()
        ))
    })
}

/// Go's `json.Marshal` (`indent: None`) or `json.MarshalIndent(v, "", "  ")`, with its
/// HTML escaping of `<`, `>`, `&`, U+2028 and U+2029.
fn go_json(v: &Value, indent: Option<&str>) -> String {
    let mut out = String::new();
    write_json(&mut out, v, indent.map(|_| 0), true);
    out
}

/// Go's `json.Encoder` with `SetEscapeHTML(false)`, newline trimmed.
fn go_json_unescaped(v: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, v, None, false);
    out
}

fn write_json(out: &mut String, v: &Value, depth: Option<usize>, html: bool) {
    let newline = |out: &mut String, d: usize| {
        out.push('\n');
        for _ in 0..d {
            out.push_str("  ");
        }
    };
    match v {
        Value::Nil | Value::Function(_) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::Uint(n) => out.push_str(&n.to_string()),
        Value::Float(f) => out.push_str(&go_json_float(*f)),
        Value::String(s) if is_number(s) => out.push_str(s),
        Value::String(s) => json_string(out, s, html),
        Value::List(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(d) = depth {
                    newline(out, d + 1);
                }
                write_json(out, item, depth.map(|d| d + 1), html);
            }
            if let Some(d) = depth {
                newline(out, d);
            }
            out.push(']');
        }
        Value::Map(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(d) = depth {
                    newline(out, d + 1);
                }
                json_string(out, k, html);
                out.push(':');
                if depth.is_some() {
                    out.push(' ');
                }
                write_json(out, item, depth.map(|d| d + 1), html);
            }
            if let Some(d) = depth {
                newline(out, d);
            }
            out.push('}');
        }
    }
}

/// Go's float encoding: shortest round-trip digits, exponent form outside
/// [1e-6, 1e21).
fn go_json_float(f: f64) -> String {
    if !f.is_finite() {
        return "null".into();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let s = format!("{f:e}");
        // Rust writes 1e21 and 1e-7; Go writes 1e+21 and 1e-07.
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_owned()
        };
        return format!("{mant}e{sign}{digits}");
    }
    format!("{f}")
}

fn json_string(out: &mut String, s: &str, html: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' if html => out.push_str(&format!("\\u{:04x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `gopkg.in/yaml.v2`'s `Marshal`, trimmed, for the values secrets hold: block
/// mappings in yaml.v2's key order, sequences not indented under their key, scalars
/// plain when they read back as the same string, else quoted; multi-line strings as
/// literal blocks.
fn yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Map(m) if !m.is_empty() => yaml_map(&mut out, m, 0),
        Value::List(l) if !l.is_empty() => yaml_list(&mut out, l, 0),
        other => {
            out.push_str(&yaml_scalar(other, 0));
            out.push('\n');
        }
    }
    out.trim_matches(go_space).to_owned()
}

fn pad(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn yaml_map(out: &mut String, m: &BTreeMap<Arc<str>, Value>, indent: usize) {
    let mut keys: Vec<&Arc<str>> = m.keys().collect();
    keys.sort_by(|a, b| yaml_key_order(a, b));
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str(&yaml_str(k, indent));
        out.push(':');
        yaml_value_after_key(out, &m[k], indent);
    }
}

fn yaml_value_after_key(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Map(sub) if !sub.is_empty() => {
            out.push('\n');
            pad(out, indent + 2);
            yaml_map(out, sub, indent + 2);
        }
        Value::List(items) if !items.is_empty() => {
            out.push('\n');
            pad(out, indent);
            yaml_list(out, items, indent);
        }
        other => {
            out.push(' ');
            out.push_str(&yaml_scalar(other, indent));
            out.push('\n');
        }
    }
}

fn yaml_list(out: &mut String, items: &[Value], indent: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Value::Map(sub) if !sub.is_empty() => yaml_map(out, sub, indent + 2),
            Value::List(sub) if !sub.is_empty() => yaml_list(out, sub, indent + 2),
            other => {
                out.push_str(&yaml_scalar(other, indent + 2));
                out.push('\n');
            }
        }
    }
}

fn yaml_scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Nil | Value::Function(_) => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Float(f) => go_json_float(*f),
        Value::String(s) if is_number(s) => s.to_string(),
        Value::String(s) => yaml_str(s, indent),
        Value::Map(_) => "{}".into(),
        Value::List(_) => "[]".into(),
    }
}

/// yaml.v2's key order: numbers embedded in keys compare by value (`a2` < `a10`),
/// letters before other characters.
fn yaml_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (ar, br): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let digits = |r: &[char], from: usize| {
            let mut j = from;
            while j < r.len() && r[j].is_ascii_digit() {
                j += 1;
            }
            j
        };
        // Go back to the start of a run of digits shared by both.
        let mut start = i;
        while start > 0 && ar[start - 1].is_ascii_digit() {
            start -= 1;
        }
        let (ae, be) = (digits(&ar, start), digits(&br, start));
        if ae > start && be > start {
            let an: String = ar[start..ae].iter().collect();
            let bn: String = br[start..be].iter().collect();
            let an = an.trim_start_matches('0');
            let bn = bn.trim_start_matches('0');
            if an.len() != bn.len() {
                return an.len().cmp(&bn.len());
            }
            if an != bn {
                return an.cmp(bn);
            }
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al != bl {
            return if al {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            };
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

/// A string as yaml.v2 writes it.
fn yaml_str(s: &str, indent: usize) -> String {
    if s.contains('\n') {
        // Literal block; `|-` without a final newline, `|` with exactly one.
        let (body, chomp) = match s.strip_suffix('\n') {
            Some(b) if !b.ends_with('\n') => (b, "|"),
            Some(_) => (s.trim_end_matches('\n'), "|+"),
            None => (s, "|-"),
        };
        let lead = if body.starts_with(' ') { "2" } else { "" };
        let mut out = format!("{chomp}{lead}");
        for line in body.split('\n') {
            out.push('\n');
            if !line.is_empty() {
                pad(&mut out, indent + 2);
                out.push_str(line);
            }
        }
        if chomp == "|+" {
            for _ in 0..s.len() - s.trim_end_matches('\n').len() - 1 {
                out.push('\n');
            }
        }
        return out;
    }
    if yaml_resolves_to_other_type(s) {
        return format!("\"{}\"", yaml_double_escape(s));
    }
    if yaml_plain_ok(s) {
        return s.to_owned();
    }
    if s.chars().all(|c| !c.is_control()) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    format!("\"{}\"", yaml_double_escape(s))
}

fn yaml_double_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Strings yaml.v2 would read back as something else (YAML 1.1 booleans, null,
/// numbers, base-60 numbers), which it therefore double-quotes.
fn yaml_resolves_to_other_type(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let t = s.replace('_', "");
    let body = t.strip_prefix(['-', '+']).unwrap_or(&t);
    if body.is_empty() {
        return false;
    }
    let int = body.bytes().all(|b| b.is_ascii_digit())
        || body
            .strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
        || body
            .strip_prefix("0b")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b == b'0' || b == b'1'));
    let float = body.parse::<f64>().is_ok()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && body.bytes().any(|b| b.is_ascii_digit());
    let base60 = body.contains(':')
        && body
            .split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        && body.as_bytes()[0].is_ascii_digit();
    int || float || base60
}

/// Whether libyaml's emitter may write `s` as a plain scalar.
fn yaml_plain_ok(s: &str) -> bool {
    let first = s.chars().next().unwrap_or(' ');
    let last = s.chars().last().unwrap_or(' ');
    if first == ' ' || last == ' ' {
        return false;
    }
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
        // `-`, `?`, `:` are fine when followed by a non-space (e.g. `-x`).
        let second = s.chars().nth(1);
        let indicator_ok = matches!(first, '-' | '?' | ':') && second.is_some_and(|c| c != ' ');
        if !indicator_ok {
            return false;
        }
    }
    if s.contains(": ") || s.contains(" #") || s.ends_with(':') {
        return false;
    }
    if s.starts_with("---") || s.starts_with("...") {
        return false;
    }
    !s.chars()
        .any(|c| c.is_control() || c == '\u{feff}' || (c as u32 > 0x7e && !c.is_alphanumeric()))
        && !s.contains([',', '[', ']', '{', '}']) // flow indicators
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(path: &str) -> Key {
        Key {
            path: path.into(),
            params: BTreeMap::new(),
        }
    }

    fn fetched(data: Json) -> Fetched {
        Fetched {
            data,
            lease_id: String::new(),
            lease_duration: 0,
            renewable: false,
        }
    }

    fn kv2(data: Json) -> Fetched {
        fetched(json!({
            "data": data,
            "metadata": {"created_time": "2026-12-03T17:00:00.1Z", "custom_metadata": null,
                         "deletion_time": "", "destroyed": false, "version": 1}
        }))
    }

    fn render(text: &str, sources: &[(&str, Fetched)]) -> Result<String, Error> {
        let t = parse("t", text)?;
        let have: BTreeMap<Key, Fetched> =
            sources.iter().map(|(p, f)| (key(p), f.clone())).collect();
        t.render(&have).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn a_template_that_grows_without_bound_fails_with_the_limit() {
        // A string doubled per action: 16 bytes << 40 would be 16 TiB.
        let doubling = format!(
            "{{{{ $x := \"0123456789abcdef\" }}}}{}{{{{ len $x }}}}",
            "{{ $x = printf \"%s%s\" $x $x }}".repeat(40)
        );
        // The same through print.
        let printing = format!(
            "{{{{ $x := \"0123456789abcdef\" }}}}{}",
            "{{ $x = print $x $x }}".repeat(40)
        );
        // One call with many copies of a secret's large value.
        let wide = format!(
            "{{{{ with secret \"s\" }}}}{{{{ print{} }}}}{{{{ end }}}}",
            " .Data.big".repeat(200)
        );
        // An escaper nested in itself: `js` doubles each backslash.
        let escaping = format!("{{{{ {}\"\\\\\"{} }}}}", "js (".repeat(30), ")".repeat(30));
        // A secret's 100 kB value written once per element of its 1000-element list:
        // no function makes the text, the output itself grows.
        let ranging = "{{ with secret \"s\" }}{{ $b := .Data.big }}\
                       {{ range .Data.list }}{{ $b }}{{ end }}{{ end }}";
        let data = json!({ "list": (0..1000).collect::<Vec<u32>>(), "big": "b".repeat(100_000) });
        for text in [&doubling, &printing, &wide, &escaping, ranging] {
            let e = render(text, &[("s", fetched(data.clone()))]).expect_err("too large");
            let message = e.to_string();
            assert!(
                message.contains(&MAX_RENDERED_BYTES.to_string()) && !message.contains("bbbb"),
                "{text}: {message}"
            );
        }
        // Below the limit, the same forms render.
        let small = "{{ $x := \"ab\" }}{{ $x = printf \"%s%s\" $x $x }}{{ print $x $x }}";
        assert_eq!(render(small, &[]).unwrap(), "abababab");
        assert_eq!(render("{{ js \"\\\\\" }}", &[]).unwrap(), "\\\\");
        assert_eq!(render("{{ html \"<&>\" }}", &[]).unwrap(), "&lt;&amp;&gt;");
    }

    #[test]
    fn kv_v2_data_is_under_data_data_as_in_consul_template() {
        let s = [(
            "secret/data/app",
            kv2(json!({"password": "p@ss", "user": "app"})),
        )];
        assert_eq!(
            render(
                "{{- with secret \"secret/data/app\" -}}\n{{ .Data.data.user }}:{{ .Data.data.password }}\n{{- end }}",
                &s
            )
            .unwrap(),
            "app:p@ss"
        );
    }

    #[test]
    fn the_map_default_prints_go_maps_for_kv_v2() {
        let s = [(
            "secret/data/app",
            kv2(json!({"user": "app", "password": "p"})),
        )];
        assert_eq!(
            render(&default_map("secret/data/app"), &s).unwrap(),
            "data: map[password:p user:app]\nmetadata: map[created_time:2026-12-03T17:00:00.1Z \
             custom_metadata:<nil> deletion_time: destroyed:false version:1]\n"
        );
        let db = [(
            "database/creds/app",
            fetched(json!({"username": "v-app", "password": "x"})),
        )];
        assert_eq!(
            render(&default_map("database/creds/app"), &db).unwrap(),
            "password: x\nusername: v-app\n"
        );
        assert_eq!(
            render(&default_json("database/creds/app"), &db).unwrap(),
            "{\"password\":\"x\",\"username\":\"v-app\"}\n"
        );
    }

    #[test]
    fn ranges_over_maps_in_sorted_order_and_trims() {
        let s = [(
            "kv/app",
            fetched(json!({"zeta": "1", "alpha": "2", "Mid": "3"})),
        )];
        let t = "{{ with secret \"kv/app\" }}{{ range $k, $v := .Data -}}\nexport {{ $k }}={{ $v | printf \"%q\" }}\n{{ end }}{{ end }}";
        assert_eq!(
            render(t, &s).unwrap(),
            "export Mid=\"3\"\nexport alpha=\"2\"\nexport zeta=\"1\"\n"
        );
    }

    #[test]
    fn a_missing_key_names_template_path_and_key_not_the_value() {
        let s = [("secret/data/app", kv2(json!({"password": "hunter2"})))];
        let e = render(
            "{{ with secret \"secret/data/app\" }}{{ .Data.data.pasword }}{{ end }}",
            &s,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::MissingKey { .. }), "{e:?}");
        assert!(text.contains("\"t\""), "{text}");
        assert!(text.contains("secret/data/app"), "{text}");
        assert!(text.contains("\"pasword\""), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn parse_errors_name_the_template_and_position() {
        let e = parse("db", "line one\n{{ with secret \"x\" }}{{ .Data.x }").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("template \"db\""), "{text}");
        assert!(text.contains(":2:"), "{text}");
        // gotmpl resolves function names when executing, not when parsing as Go does.
        let e = render("{{ nosuchfunc 1 }}", &[]).unwrap_err();
        assert!(e.to_string().contains("nosuchfunc"), "{e}");
    }

    #[test]
    fn dependencies_are_found_round_by_round_and_deduplicated() {
        let t = parse(
            "t",
            "{{ with secret \"kv/ptr\" }}{{ with secret .Data.path }}{{ .Data.v }}{{ end }}{{ end }}\
             {{ with secret \"database/creds/app\" }}{{ .Data.username }}{{ end }}\
             {{ with secret \"database/creds/app\" }}:{{ .Data.password }}{{ end }}",
        )
        .unwrap();
        let mut have = BTreeMap::new();
        let first = t.execute(&have);
        assert_eq!(first.missing, [key("kv/ptr"), key("database/creds/app")]);
        let mut fetches = Vec::new();
        let out = t
            .resolve(&mut have, |k| {
                fetches.push(k.path.clone());
                Ok::<_, ()>(match k.path.as_str() {
                    "kv/ptr" => fetched(json!({"path": "kv/target"})),
                    "kv/target" => fetched(json!({"v": "T"})),
                    _ => fetched(json!({"username": "u", "password": "p"})),
                })
            })
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Tu:p");
        assert_eq!(fetches, ["kv/ptr", "database/creds/app", "kv/target"]);
        assert_eq!(t.dependencies(&have).len(), 3);
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_an_error() {
        let t = parse(
            "deep",
            "{{ with secret \"p0\" }}{{ with secret .Data.next }}{{ with secret .Data.next }}\
             {{ with secret .Data.next }}{{ with secret .Data.next }}x{{ end }}{{ end }}{{ end }}\
             {{ end }}{{ end }}",
        )
        .unwrap();
        let mut have = BTreeMap::new();
        let r = t
            .resolve(&mut have, |k| {
                let n: usize = k.path[1..].parse().unwrap();
                Ok::<_, ()>(fetched(json!({"next": format!("p{}", n + 1)})))
            })
            .unwrap();
        assert!(matches!(r, Err(Error::Unresolved { .. })), "{r:?}");
    }

    #[test]
    fn writes_with_parameters_are_one_source_with_those_parameters() {
        let t = parse(
            "cert",
            "{{ with secret \"pki/issue/web\" \"common_name=a.example\" \"ttl=1h\" }}{{ .Data.certificate }}{{ end }}\
             {{ with pkiCert \"pki/issue/web\" \"ttl=1h\" \"common_name=a.example\" }}{{ .Key }}{{ .CA }}{{ range .CAChain }}{{ . }}{{ end }}{{ end }}",
        )
        .unwrap();
        let e = t.execute(&BTreeMap::new());
        assert_eq!(e.missing.len(), 1);
        assert_eq!(
            e.missing[0].params,
            BTreeMap::from([
                ("common_name".to_owned(), "a.example".to_owned()),
                ("ttl".to_owned(), "1h".to_owned())
            ])
        );
        let have = BTreeMap::from([(
            e.missing[0].clone(),
            fetched(
                json!({"certificate": "C", "private_key": "K", "issuing_ca": "CA",
                           "ca_chain": ["CA", "CA"]}),
            ),
        )]);
        assert_eq!(
            String::from_utf8(t.render(&have).unwrap()).unwrap(),
            "CK\nCA\nCA\n"
        );
    }

    #[test]
    fn helper_functions_behave_like_consul_templates() {
        let s = [(
            "kv/app",
            fetched(
                json!({"b64": "aGVsbG8=", "list": "a, b,c", "html": "<a&b>", "n": 5,
                           "nested": {"k": [1, "two", null]}, "pad": "  x \n"}),
            ),
        )];
        let cases = [
            ("{{ .Data.b64 | base64Decode }}", "hello"),
            ("{{ \"hello\" | base64Encode }}", "aGVsbG8="),
            ("{{ .Data.pad | trimSpace }}|", "x|"),
            (
                "{{ range split \",\" .Data.list }}[{{ . }}]{{ end }}",
                "[a][ b][c]",
            ),
            ("{{ split \",\" .Data.list | join \";\" }}", "a; b;c"),
            ("{{ if .Data.list | contains \"b,\" }}yes{{ end }}", "yes"),
            (
                "{{ if split \",\" .Data.list | contains \"c\" }}yes{{ end }}",
                "yes",
            ),
            ("{{ .Data.list | replaceAll \",\" \"|\" }}", "a| b|c"),
            (
                "{{ .Data | toJSON }}",
                "{\"b64\":\"aGVsbG8=\",\"html\":\"\\u003ca\\u0026b\\u003e\",\"list\":\"a, b,c\",\"n\":5,\"nested\":{\"k\":[1,\"two\",null]},\"pad\":\"  x \\n\"}",
            ),
            (
                "{{ .Data.nested | toJSONPretty }}",
                "{\n  \"k\": [\n    1,\n    \"two\",\n    null\n  ]\n}",
            ),
            ("{{ .Data.nested | toYAML }}", "k:\n- 1\n- two\n- null"),
            (
                "{{ printf \"%s=%s %q\" \"n\" .Data.n .Data.n }}",
                "n=5 \"5\"",
            ),
            ("{{ index .Data \"html\" }}", "<a&b>"),
            (
                "{{ $x := .Data.n }}{{ if eq $x \"5\" }}five{{ else }}other{{ end }}",
                "five",
            ),
        ];
        for (body, want) in cases {
            let text = format!("{{{{ with secret \"kv/app\" }}}}{body}{{{{ end }}}}");
            assert_eq!(render(&text, &s).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn yaml_quotes_what_would_read_back_as_another_type() {
        let v = from_json(
            &json!({"a": "yes", "b": "123", "c": "plain text", "d": "x: y",
                                  "e": "", "f": "multi\nline", "g": {}, "h": [], "a10": 1, "a9": 2}),
        );
        assert_eq!(
            yaml(&v),
            "a: \"yes\"\na9: 2\na10: 1\nb: \"123\"\nc: plain text\nd: 'x: y'\ne: \"\"\nf: |-\n  multi\n  line\ng: {}\nh: []"
        );
    }

    #[test]
    fn default_templates_quote_their_path() {
        let t = parse("x", &default_map("kv/a\"b")).unwrap();
        let have = BTreeMap::from([(key("kv/a\"b"), fetched(json!({"k": "v"})))]);
        assert_eq!(t.render(&have).unwrap(), b"k: v\n");
    }
}
