//! Reads the public API reference (`tests/contract/api-reference.txt`, kept
//! verbatim) into operations: method, path, scope, status, example bodies and
//! field tables.
#![allow(dead_code)]

use serde_json::Value;

pub const TEXT: &str = include_str!("api-reference.txt");

/// One row of a field table: `agentTypestringopenclaw, openfang` in the text.
#[derive(Debug, Clone)]
pub struct FieldRow {
    pub name: String,
    pub json_type: String,
    /// The values or description column.
    pub rest: String,
}

#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub title: String,
    pub method: String,
    /// In OpenAPI form: `/api/agents/{id}`.
    pub path: String,
    pub scope: String,
    /// Status the reference names, such as 201; `None` when it names none.
    pub status: Option<u16>,
    pub request_example: Option<Value>,
    pub response_example: Option<Value>,
    pub fields: Vec<FieldRow>,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const JSON_TYPES: [&str; 6] = ["string", "boolean", "integer", "number", "array", "object"];

/// `/api/agents/:id/workspace/backups/:backupId` → `/api/agents/{id}/workspace/backups/{backupId}`.
fn openapi_path(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => segment.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Reads a JSON value that starts at `lines[*at]` and may span lines.
fn read_json(lines: &[&str], at: &mut usize) -> Value {
    let mut text = String::new();
    while *at < lines.len() {
        text.push_str(lines[*at]);
        text.push('\n');
        *at += 1;
        if let Ok(value) = serde_json::from_str::<Value>(&text) {
            return value;
        }
    }
    panic!("unterminated JSON example in the reference:\n{text}");
}

fn field_row(line: &str, names: &[String]) -> Option<FieldRow> {
    let name = names.iter().filter(|name| line.starts_with(name.as_str())).max_by_key(|name| name.len())?;
    let after = &line[name.len()..];
    let json_type = JSON_TYPES.iter().find(|json_type| after.starts_with(*json_type))?;
    Some(FieldRow { name: name.clone(), json_type: json_type.to_string(), rest: after[json_type.len()..].trim().to_string() })
}

/// Parses every operation of the reference, in the reference's order.
pub fn operations() -> Vec<Operation> {
    let lines: Vec<&str> = TEXT.lines().map(str::trim_end).collect();
    let mut operations: Vec<Operation> = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        let method_path = line.split_once(' ').filter(|(method, path)| METHODS.contains(method) && path.starts_with('/'));
        if let Some((method, path)) = method_path {
            let title = lines[..at].iter().rev().find(|line| !line.is_empty()).unwrap_or(&"").to_string();
            operations.push(Operation {
                title,
                method: method.to_lowercase(),
                path: openapi_path(path),
                ..Operation::default()
            });
            at += 1;
            continue;
        }
        let Some(operation) = operations.last_mut() else {
            at += 1;
            continue;
        };
        if let Some(scope) = line.strip_prefix("Scope required: ") {
            operation.scope = scope.to_string();
        } else if line == "Request body" {
            at += 1;
            while lines[at].is_empty() {
                at += 1;
            }
            operation.request_example = Some(read_json(&lines, &mut at));
            continue;
        } else if let Some(rest) = line.strip_prefix("Response") {
            if let Some(code) = rest.strip_prefix(": ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok()) {
                operation.status = Some(code);
            }
            let mut next = at + 1;
            while next < lines.len() && lines[next].is_empty() {
                next += 1;
            }
            if next < lines.len() && lines[next].starts_with('{') {
                operation.response_example = Some(read_json(&lines, &mut next));
                at = next;
                continue;
            }
        } else if line.starts_with("FieldType") {
            let names: Vec<String> = operation
                .request_example
                .as_ref()
                .and_then(Value::as_object)
                .map(|object| object.keys().cloned().collect())
                .unwrap_or_default();
            at += 1;
            while at < lines.len() {
                let Some(row) = field_row(lines[at], &names) else { break };
                operation.fields.push(row);
                at += 1;
            }
            continue;
        }
        at += 1;
    }
    operations
}
