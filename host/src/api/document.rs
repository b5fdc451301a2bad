//! The OpenAPI document as the server publishes it, and the check of every
//! JSON request body against the document's schema for it.
//!
//! poem-openapi generates the document from the handlers. What it cannot
//! know is added here: request bodies reject unknown fields
//! (`additionalProperties: false`), string rules the server enforces in
//! code become patterns, and the agent types and regions this server
//! accepts come from the loaded plugins and the configuration.
//! Bodies are validated against the document before a handler runs, so a
//! malformed body gets a 400 that names the field, the same way for every
//! operation.

use std::sync::Arc;

use poem::endpoint::make_sync;
use poem::http::{Method, StatusCode};
use poem::web::Html;
use poem::{Endpoint, IntoResponse, Request, Response};
use serde_json::{Map, Value, json};

use jsonschema::error::ValidationErrorKind as Kind;

use super::ApiError;
use super::error::error_response;
use crate::{ids, secrets};

/// Produces the published document on each request, so that it lists the
/// agent types of the plugins loaded now.
pub type Published = Arc<dyn Fn() -> Value + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub enum DocumentFormat {
    Json,
    Yaml,
}

/// Serves the published document as JSON or YAML.
pub fn document_endpoint(published: Published, format: DocumentFormat) -> impl Endpoint + use<> {
    make_sync(move |_| {
        let document = published();
        let (content_type, text) = match format {
            DocumentFormat::Json => ("application/json", serde_json::to_string_pretty(&document).unwrap_or_default()),
            DocumentFormat::Yaml => ("application/yaml", serde_yaml::to_string(&document).unwrap_or_default()),
        };
        Response::builder().content_type(content_type).body(text)
    })
}

/// Serves poem-openapi's Swagger UI page with the published document in
/// place of the generated one it embeds.
pub fn swagger_ui(page: &str, generated: &str, published: Published) -> impl Endpoint + use<> {
    let (head, tail) = page.split_once(generated).expect("the Swagger UI page embeds the generated document");
    let (head, tail): (Arc<str>, Arc<str>) = (head.into(), tail.into());
    make_sync(move |_| {
        // `</` inside a JSON string would end the page's script element.
        let document = serde_json::to_string(&published()).unwrap_or_default().replace("</", "<\\/");
        Html(format!("{head}{document}{tail}"))
    })
}

/// Middleware that checks requests against the document. A JSON body that
/// does not fit its operation's schema gets 400 before any handler runs, a
/// bad parameter gets 400 naming it, and an unknown method gets 405 with `Allow`.
pub async fn check_request<E: Endpoint>(next: E, mut request: Request, document: Arc<ApiDocument>) -> poem::Result<Response> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        let body = request.take_body().into_bytes().await?;
        if let Err(BodyError(message)) = document.check_body(&method, &path, &body) {
            return Ok(ApiError::bad_request("invalid_request", message).into_response());
        }
        request.set_body(body);
    }
    let error = match next.call(request).await {
        Ok(response) => return Ok(response.into_response()),
        Err(error) => error,
    };

    if let Some(parse) = error.downcast_ref::<poem_openapi::error::ParseParamError>() {
        let name = parse.name;
        let message = match document.parameter_rule(&method, &path, name) {
            Some(rule) => format!("parameter `{name}` is invalid: it must be {rule}"),
            None => format!("parameter `{name}` is invalid: {error}"),
        };
        return Ok(ApiError::bad_request("invalid_request", message).into_response());
    }
    if error.status() == StatusCode::METHOD_NOT_ALLOWED {
        let list = document.allowed_methods(&path).iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let message = format!("{method} is not allowed on {path}; use {list}");
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &message);
        if let Ok(value) = list.parse() {
            response.headers_mut().insert(poem::http::header::ALLOW, value);
        }
        return Ok(response);
    }
    Err(error)
}

/// Maximum length of an error message built from validation failures, in characters.
const MAX_MESSAGE_CHARS: usize = 400;

/// The document and one compiled validator per operation with a JSON body.
pub struct ApiDocument {
    base: Value,
    bodies: Vec<BodyRule>,
    /// Every path of the document with its methods, for the `Allow` header.
    routes: Vec<(Vec<Option<String>>, Vec<Method>)>,
    /// Method, path, name and schema of every parameter.
    parameters: Vec<(Method, Vec<Option<String>>, String, Value)>,
}

/// A string property whose rule the server enforces in code, stated in
/// the document as a pattern so that clients and fuzzers know it.
struct Constraint {
    schema: &'static str,
    property: &'static str,
    pattern: &'static str,
    /// The rule in words, for error messages: "must be …".
    rule: &'static str,
    /// Maximum length in characters, when the pattern leaves the length open.
    max_length: Option<usize>,
}

const LABEL_RULE: &str = "a label without control characters and without leading or trailing whitespace";

const CONSTRAINTS: [Constraint; 6] = [
    Constraint {
        schema: "DeployRequest",
        property: "name",
        pattern: ids::LABEL_PATTERN,
        rule: LABEL_RULE,
        max_length: Some(ids::AGENT_NAME_MAX_CHARS),
    },
    Constraint {
        schema: "CreateScheduleRequest",
        property: "name",
        pattern: ids::LABEL_PATTERN,
        rule: LABEL_RULE,
        max_length: Some(ids::LABEL_MAX_CHARS),
    },
    Constraint {
        schema: "UpdateScheduleRequest",
        property: "name",
        pattern: ids::LABEL_PATTERN,
        rule: LABEL_RULE,
        max_length: Some(ids::LABEL_MAX_CHARS),
    },
    Constraint {
        schema: "CreateTokenRequest",
        property: "name",
        pattern: ids::LABEL_PATTERN,
        rule: LABEL_RULE,
        max_length: Some(ids::LABEL_MAX_CHARS),
    },
    Constraint {
        schema: "SetSecretRequest",
        property: "key",
        pattern: secrets::KEY_PATTERN,
        rule: "an environment variable name: a letter or `_`, then letters, digits and `_`",
        max_length: None,
    },
    Constraint {
        schema: "SetSecretRequest",
        property: "value",
        pattern: secrets::VALUE_PATTERN,
        rule: "text without NUL characters",
        max_length: None,
    },
];

/// Writes each constraint's pattern and length into its property.
fn apply_constraints(base: &mut Value) {
    for constraint in &CONSTRAINTS {
        if base["components"]["schemas"][constraint.schema].is_null() {
            continue;
        }
        let field = &mut base["components"]["schemas"][constraint.schema]["properties"][constraint.property];
        assert!(field.is_object(), "the document has no property {}.{}", constraint.schema, constraint.property);
        field["pattern"] = json!(constraint.pattern);
        if let Some(max) = constraint.max_length {
            field["minLength"] = json!(1);
            field["maxLength"] = json!(max);
        }
    }
}

/// Routes outside the API, served for GET only.
const PAGES: [&str; 4] = ["/openapi.json", "/openapi.yaml", "/docs", "/docs/"];

fn segments(path: &str) -> Vec<Option<String>> {
    path.split('/').map(|segment| (!segment.starts_with('{')).then(|| segment.to_string())).collect()
}

fn matches(template: &[Option<String>], path: &[&str]) -> bool {
    template.len() == path.len() && template.iter().zip(path).all(|(want, got)| want.as_deref().is_none_or(|want| want == *got))
}

struct BodyRule {
    method: Method,
    /// Path segments; `None` matches any one segment (a path parameter).
    segments: Vec<Option<String>>,
    schema_name: String,
    required: bool,
    validator: jsonschema::Validator,
}

/// A request body that does not fit its operation's schema.
#[derive(Debug, PartialEq, Eq)]
pub struct BodyError(pub String);

impl ApiDocument {
    /// Builds the document from poem-openapi's JSON output.
    pub fn new(generated: &str) -> ApiDocument {
        let mut base: Value = serde_json::from_str(generated).expect("poem-openapi generates valid JSON");
        merge_annotation_members(&mut base);
        apply_constraints(&mut base);

        let mut routes: Vec<(Vec<Option<String>>, Vec<Method>)> = PAGES.iter().map(|page| (segments(page), vec![Method::GET])).collect();
        let mut parameters = Vec::new();
        // Method, path, schema name and whether the body is required.
        let mut body_refs = Vec::new();
        for (path, methods) in base["paths"].as_object().cloned().unwrap_or_default() {
            let path_segments = segments(&path);
            let mut allowed = Vec::new();
            for (method, operation) in methods.as_object().cloned().unwrap_or_default() {
                let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
                allowed.push(method.clone());
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if let Some(name) = parameter["name"].as_str() {
                        parameters.push((method.clone(), path_segments.clone(), name.to_string(), parameter["schema"].clone()));
                    }
                }
                let body = &operation["requestBody"];
                if let Some(reference) = json_media(&body["content"])["schema"]["$ref"].as_str() {
                    let schema_name = reference.rsplit('/').next().unwrap_or_default().to_string();
                    body_refs.push((method, path_segments.clone(), schema_name, body["required"].as_bool().unwrap_or(false)));
                }
            }
            routes.push((path_segments, allowed));
        }

        for (_, _, name, _) in &body_refs {
            if let Some(schema) = base["components"]["schemas"][name].as_object_mut() {
                schema.insert("additionalProperties".into(), Value::Bool(false));
            }
        }
        let schemas = json_schema(&base["components"]["schemas"]);
        let bodies = body_refs
            .into_iter()
            .map(|(method, segments, schema_name, required)| {
                let root = json!({
                    "$ref": format!("#/components/schemas/{schema_name}"),
                    "components": {"schemas": schemas.clone()},
                });
                let validator = jsonschema::draft7::new(&root).expect("the generated schemas are valid JSON Schema");
                BodyRule { method, segments, schema_name, required, validator }
            })
            .collect();
        ApiDocument { base, bodies, routes, parameters }
    }

    /// Lists the methods the document has for `path`, for an `Allow` header.
    pub fn allowed_methods(&self, path: &str) -> Vec<Method> {
        let path: Vec<&str> = path.split('/').collect();
        // As in routing, a literal segment beats a parameter:
        // `/api/agents/deploy` is not `/api/agents/{id}`.
        let literals = |template: &[Option<String>]| template.iter().filter(|segment| segment.is_some()).count();
        let candidates: Vec<_> = self.routes.iter().filter(|(template, _)| matches(template, &path)).collect();
        let most_specific = candidates.iter().map(|(template, _)| literals(template)).max().unwrap_or(0);
        let mut allowed: Vec<Method> = candidates
            .into_iter()
            .filter(|(template, _)| literals(template) == most_specific)
            .flat_map(|(_, methods)| methods.clone())
            .collect();
        // poem serves HEAD wherever it serves GET.
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        allowed
    }

    /// Returns the document with the agent types and regions of this server filled in.
    pub fn published(&self, agent_types: &[String], regions: &[String]) -> Value {
        let mut document = self.base.clone();
        let deploy = &mut document["components"]["schemas"]["DeployRequest"]["properties"];
        if deploy.is_object() {
            deploy["agentType"]["enum"] = json!(agent_types);
            deploy["region"]["enum"] = json!(regions);
        }
        document
    }

    /// States what a parameter of `method path` accepts, from its schema:
    /// "an integer from 1 to 10000".
    pub fn parameter_rule(&self, method: &Method, path: &str, name: &str) -> Option<String> {
        let path: Vec<&str> = path.split('/').collect();
        let (_, _, _, schema) = self
            .parameters
            .iter()
            .find(|(want, template, parameter, _)| want == method && parameter == name && matches(template, &path))?;
        let rule = match schema["type"].as_str()? {
            "boolean" => "`true` or `false`".to_string(),
            // poem-openapi writes integer bounds as floats, such as `1.0`.
            "integer" => match (schema["minimum"].as_f64().map(|min| min as i64), schema["maximum"].as_f64().map(|max| max as i64)) {
                (Some(min), Some(max)) => format!("an integer from {min} to {max}"),
                (Some(min), None) => format!("an integer of at least {min}"),
                _ => "an integer".to_string(),
            },
            other => format!("a {other}"),
        };
        Some(rule)
    }

    /// Checks the body of a request to `method path` against the schema of
    /// its operation. Requests to other paths pass unchecked.
    pub fn check_body(&self, method: &Method, path: &str, body: &[u8]) -> Result<(), BodyError> {
        let path: Vec<&str> = path.split('/').collect();
        let Some(rule) = self.bodies.iter().find(|rule| rule.method == method && matches(&rule.segments, &path)) else {
            return Ok(());
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            if rule.required {
                return Err(BodyError(format!(
                    "the request body is empty; send a JSON object as described by the {} schema in /openapi.json",
                    rule.schema_name
                )));
            }
            return Ok(());
        }
        let value: Value = serde_json::from_slice(body).map_err(|error| {
            BodyError(format!("the request body is not valid JSON ({error}); send a JSON object"))
        })?;
        let errors: Vec<_> = rule.validator.iter_errors(&value).collect();
        let too_short = |field: &jsonschema::paths::Location| {
            errors.iter().any(|error| error.instance_path() == field && matches!(error.kind(), Kind::MinLength { .. }))
        };
        // An empty label also fails its pattern, and the length error is the clearer one.
        let mut problems: Vec<String> = errors
            .iter()
            .filter(|error| !(matches!(error.kind(), Kind::Pattern { .. }) && too_short(error.instance_path())))
            .map(describe)
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort();
        problems.dedup();
        let mut message = format!("invalid {}: {}", rule.schema_name, problems.join("; "));
        if message.chars().count() > MAX_MESSAGE_CHARS {
            message = message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…";
        }
        Err(BodyError(message))
    }
}

/// Describes one validation failure by the field it concerns, without
/// repeating the value sent, which may be a secret.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    let pointer = error.instance_path().to_string();
    let field = pointer.trim_start_matches('/').replace('/', ".");
    let at = if field.is_empty() { "the body".to_string() } else { format!("field `{field}`") };
    match error.kind() {
        Kind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_string);
            if field.is_empty() { format!("field `{name}` is required") } else { format!("{at}: field `{name}` is required") }
        }
        Kind::AdditionalProperties { unexpected } => {
            let names = unexpected.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
            format!("{at} has unknown field {names}; remove it")
        }
        Kind::Type { kind } => format!("{at} must be of type {}", type_names(kind)),
        Kind::Pattern { pattern } => match CONSTRAINTS.iter().find(|constraint| constraint.pattern == pattern) {
            Some(constraint) => format!("{at} must be {}", constraint.rule),
            None => format!("{at} must match {pattern}"),
        },
        Kind::MinLength { limit: 1 } => format!("{at} must not be empty"),
        Kind::Enum { options } => format!("{at} must be one of {options}"),
        _ => format!("{at}: {}", error.masked_with("the value")),
    }
}

fn type_names(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(single) => single.to_string(),
        jsonschema::error::TypeKind::Multiple(many) => {
            many.iter().map(|single| single.to_string()).filter(|name| name != "null").collect::<Vec<_>>().join(" or ")
        }
    }
}

/// poem-openapi writes a nullable or described reference as
/// `allOf: [{$ref}, {nullable: true, description}]`. The second member is no
/// schema of its own, and client generators reject it; its keywords move
/// to the enclosing schema.
fn merge_annotation_members(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::Array(members)) = object.get_mut("allOf") {
                let mut annotations = Map::new();
                members.retain(|member| match member.as_object() {
                    Some(keys) if !keys.is_empty() && keys.keys().all(|key| key == "nullable" || key == "description") => {
                        annotations.extend(keys.clone());
                        false
                    }
                    _ => true,
                });
                for (key, annotation) in annotations {
                    object.entry(key).or_insert(annotation);
                }
            }
            object.values_mut().for_each(merge_annotation_members);
        }
        Value::Array(items) => items.iter_mut().for_each(merge_annotation_members),
        _ => {}
    }
}

/// Returns the JSON entry of an OpenAPI `content` map, whose key may carry
/// parameters such as `; charset=utf-8`.
pub fn json_media(content: &Value) -> &Value {
    content
        .as_object()
        .and_then(|media| media.iter().find(|(key, _)| key.starts_with("application/json")).map(|(_, value)| value))
        .unwrap_or(&Value::Null)
}

/// Rewrites OpenAPI 3.0 schemas into JSON Schema: `nullable: true` becomes
/// a `null` alternative.
pub fn json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(object) => {
            let mut converted: Map<String, Value> =
                object.iter().filter(|(key, _)| *key != "nullable").map(|(key, value)| (key.clone(), json_schema(value))).collect();
            if object.get("nullable") != Some(&Value::Bool(true)) {
                return Value::Object(converted);
            }
            match converted.get("type").cloned() {
                Some(Value::String(json_type)) => {
                    converted.insert("type".into(), json!([json_type, "null"]));
                    if let Some(Value::Array(values)) = converted.get_mut("enum") {
                        values.push(Value::Null);
                    }
                    Value::Object(converted)
                }
                _ => json!({"anyOf": [Value::Object(converted), {"type": "null"}]}),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(json_schema).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> ApiDocument {
        let spec = json!({
            "openapi": "3.0.0",
            "paths": {"/api/things/{id}": {"post": {
                "requestBody": {"required": true, "content": {"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
            }}},
            "components": {"schemas": {"Thing": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 4},
                    "note": {"type": "string", "nullable": true},
                    "password": {"type": "string", "writeOnly": true, "maxLength": 3},
                },
            }}},
        });
        ApiDocument::new(&spec.to_string())
    }

    fn check(body: &str) -> Result<(), BodyError> {
        document().check_body(&Method::POST, "/api/things/abc", body.as_bytes())
    }

    #[test]
    fn valid_bodies_and_other_paths_pass() {
        assert_eq!(check(r#"{"name": "ok", "note": null}"#), Ok(()));
        assert_eq!(document().check_body(&Method::POST, "/api/other", b"not json"), Ok(()));
        assert_eq!(document().check_body(&Method::GET, "/api/things/abc", b"not json"), Ok(()));
    }

    #[test]
    fn failures_name_the_field() {
        let BodyError(message) = check(r#"{"name": 5}"#).unwrap_err();
        assert!(message.contains("field `name` must be of type string"), "{message}");
        let BodyError(message) = check(r#"{"note": "x"}"#).unwrap_err();
        assert!(message.contains("field `name` is required"), "{message}");
        let BodyError(message) = check(r#"{"name": "a", "colour": "red"}"#).unwrap_err();
        assert!(message.contains("unknown field `colour`"), "{message}");
        let BodyError(message) = check("{").unwrap_err();
        assert!(message.contains("not valid JSON"), "{message}");
        let BodyError(message) = check("").unwrap_err();
        assert!(message.contains("empty"), "{message}");
    }

    #[test]
    fn allow_lists_the_most_specific_path() {
        let spec = json!({
            "openapi": "3.0.0",
            "paths": {
                "/api/things/{id}": {"get": {}, "delete": {}},
                "/api/things/new": {"post": {}},
            },
            "components": {"schemas": {}},
        });
        let document = ApiDocument::new(&spec.to_string());
        assert_eq!(document.allowed_methods("/api/things/new"), vec![Method::POST]);
        assert_eq!(document.allowed_methods("/api/things/abc"), vec![Method::DELETE, Method::GET, Method::HEAD]);
        assert!(document.allowed_methods("/elsewhere").is_empty());
        assert_eq!(document.allowed_methods("/docs"), vec![Method::GET, Method::HEAD]);
    }

    #[test]
    fn failures_never_repeat_the_value() {
        let BodyError(message) = check(r#"{"name": "a", "password": "hunter2-secret"}"#).unwrap_err();
        assert!(message.contains("field `password`"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
