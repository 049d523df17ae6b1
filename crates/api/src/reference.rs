//! Renders the API reference (`docs/api-reference.md`) from the generated CRDs' OpenAPI schemas,
//! so the reference cannot drift from what the API server enforces: `crdgen` writes it next to
//! the CRDs and `crdgen --check` fails when it is stale.
//!
//! Per kind: short names, categories and printer columns, then one table per object level
//! (`.spec`, `.spec.template.roles[]`, …) with each field's type, whether it is required, its
//! default, description, constraints (enum, bounds, lengths, pattern), and the CEL rules
//! (`x-kubernetes-validations`) of that level and of its scalar fields.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// One field of an object level, as a row of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRow {
    /// Path from the object root, e.g. `.spec.template.roles[].name`.
    pub path: String,
    /// Rendered type: `string`, `integer (int32)`, `[]object`, `map[string]string`, …
    pub type_: String,
    /// Listed in the parent's `required`.
    pub required: bool,
    /// The schema's `default`, as compact JSON; empty when none.
    pub default: String,
    /// The doc comment schemars put in `description`.
    pub description: String,
    /// Enum values, bounds, lengths, pattern, int-or-string; `; `-separated.
    pub constraints: String,
}

/// A CEL rule from `x-kubernetes-validations`, with the path of the schema node it sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelRule {
    /// Path of the node carrying the rule (`self` in the rule is this node).
    pub path: String,
    /// The CEL expression.
    pub rule: String,
    /// The message the API server returns when the rule fails; empty when none.
    pub message: String,
}

/// One object level: its fields and the CEL rules on it and on its scalar fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    /// Path of the object, e.g. `.spec.template`; `.` for the root.
    pub path: String,
    /// The object's own description.
    pub description: String,
    /// Its fields, in the schema's (alphabetical) order.
    pub fields: Vec<FieldRow>,
    /// Rules on the object itself and on fields that are not object levels themselves.
    pub rules: Vec<CelRule>,
}

/// Note shown for object fields whose own fields carry no descriptions (the embedded Kubernetes
/// PodSpecs, whose descriptions `crd.rs` strips): they are not expanded.
const UPSTREAM_NOTE: &str = "embedded Kubernetes type; fields as documented upstream";

/// Walks a schema into its object levels, depth first, parents before children.
pub fn levels(schema: &Value) -> Vec<Level> {
    let mut out = Vec::new();
    walk_object(schema, ".", &mut out);
    out
}

/// If `node` is an expandable object (has documented `properties`), or an array/map of one,
/// returns the object schema and the path suffix (`""`, `"[]"`, `".*"`) of its level.
fn object_level(node: &Value) -> Option<(&Value, &'static str)> {
    let expandable = |n: &Value| {
        n.get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| p.values().any(|f| f.get("description").is_some()))
    };
    if expandable(node) {
        return Some((node, ""));
    }
    if let Some(items) = node.get("items").filter(|i| expandable(i)) {
        return Some((items, "[]"));
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| expandable(v)) {
        return Some((values, ".*"));
    }
    None
}

fn walk_object(node: &Value, path: &str, out: &mut Vec<Level>) {
    let mut level = Level {
        path: path.to_string(),
        description: text(node.get("description")),
        fields: Vec::new(),
        rules: rules_of(node, path),
    };
    let required: Vec<&str> = node
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let empty = Map::new();
    let props = node
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut children = Vec::new();
    for (name, field) in props {
        let field_path = if path == "." {
            format!(".{name}")
        } else {
            format!("{path}.{name}")
        };
        let mut description = text(field.get("description"));
        if is_undocumented_object(field) {
            if !description.is_empty() {
                description.push(' ');
            }
            description.push_str(&format!("({UPSTREAM_NOTE})"));
        }
        level.fields.push(FieldRow {
            path: field_path.clone(),
            type_: type_of(field),
            required: required.contains(&name.as_str()),
            default: field.get("default").map(compact).unwrap_or_default(),
            description,
            constraints: constraints_of(field),
        });
        match object_level(field) {
            Some((object, suffix)) => {
                let child_path = format!("{field_path}{suffix}");
                // Rules on the array/map node itself sit at the field, not the element level.
                if !suffix.is_empty() {
                    level.rules.extend(rules_of(field, &field_path));
                }
                children.push((object, child_path));
            }
            None => {
                level.rules.extend(rules_of(field, &field_path));
                if let Some(items) = field.get("items") {
                    level
                        .rules
                        .extend(rules_of(items, &format!("{field_path}[]")));
                }
            }
        }
    }
    out.push(level);
    for (object, child_path) in children {
        walk_object(object, &child_path, out);
    }
}

/// An object with properties, none documented: an embedded upstream type.
fn is_undocumented_object(node: &Value) -> bool {
    let target = node
        .get("items")
        .or_else(|| node.get("additionalProperties"))
        .unwrap_or(node);
    target
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty() && p.values().all(|f| f.get("description").is_none()))
}

fn rules_of(node: &Value, path: &str) -> Vec<CelRule> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| CelRule {
                    path: path.to_string(),
                    rule: text(r.get("rule")),
                    message: text(r.get("message")),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn type_of(node: &Value) -> String {
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        return "int or string".to_string();
    }
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && node.get("type").is_none()
    {
        return "any".to_string();
    }
    let ty = node.get("type").and_then(Value::as_str).unwrap_or("any");
    match ty {
        "array" => format!(
            "[]{}",
            node.get("items")
                .map(type_of)
                .unwrap_or_else(|| "any".into())
        ),
        "object" => match node.get("additionalProperties") {
            Some(values) if values.is_object() => format!("map[string]{}", type_of(values)),
            _ => "object".to_string(),
        },
        other => match node.get("format").and_then(Value::as_str) {
            Some(format) => format!("{other} ({format})"),
            None => other.to_string(),
        },
    }
}

fn constraints_of(node: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
    ] {
        if let Some(v) = node.get(key) {
            let exclusive = match key {
                "minimum" => node.get("exclusiveMinimum") == Some(&Value::Bool(true)),
                "maximum" => node.get("exclusiveMaximum") == Some(&Value::Bool(true)),
                _ => false,
            };
            let suffix = if exclusive { " (exclusive)" } else { "" };
            parts.push(format!("{label} {}{suffix}", number(v)));
        }
    }
    if let Some(p) = node.get("pattern").and_then(Value::as_str) {
        parts.push(format!("pattern `{p}`"));
    }
    if let Some(items) = node.get("items") {
        if let Some(values) = items.get("enum").and_then(Value::as_array) {
            let values: Vec<String> = values.iter().map(|v| format!("`{}`", plain(v))).collect();
            parts.push(format!("items one of {}", values.join(", ")));
        }
    }
    if let Some(list_type) = node.get("x-kubernetes-list-type").and_then(Value::as_str) {
        parts.push(format!("list type {list_type}"));
    }
    parts.join("; ")
}

/// Integers stay integers even when the schema writes `1.0`.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => plain(v),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => compact(other),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// Makes text safe inside a Markdown table cell: one line, pipes escaped.
fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Wraps text in a code span (empty stays empty), safe inside a table cell.
fn code(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else if s.contains('`') {
        format!("`` {} ``", cell(s))
    } else {
        format!("`{}`", cell(s))
    }
}

/// Renders the whole reference for the given CRDs, in their order.
pub fn render(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated by `make crds` (crates/api, bin crdgen) from the CRD schemas. Do not edit. -->\n\
         # Muster API reference\n\n\
         Generated from the OpenAPI schemas in `config/crd/` (themselves generated from `crates/api`).\n\
         For what the kinds are for and how they fit together, see [`api.md`](api.md).\n\
         Each table is one object level; nested objects and array elements (`[]`) get their own table.\n\
         CEL rules are listed at the level that carries them (`self` is the node at the rule's path).\n\n",
    );
    for crd in crds {
        let spec = &crd.spec;
        let _ = writeln!(
            out,
            "- [{}](#{})",
            spec.names.kind,
            spec.names.kind.to_lowercase()
        );
    }
    out.push('\n');
    for crd in crds {
        render_crd(crd, &mut out);
    }
    out
}

fn render_crd(crd: &CustomResourceDefinition, out: &mut String) {
    let spec = &crd.spec;
    let names = &spec.names;
    let _ = writeln!(out, "## {}\n", names.kind);
    let short = names
        .short_names
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let categories = names
        .categories
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| group | `{}` |", spec.group);
    let _ = writeln!(out, "| scope | {} |", spec.scope);
    let _ = writeln!(
        out,
        "| plural / singular | `{}` / `{}` |",
        names.plural,
        names.singular.as_deref().unwrap_or_default()
    );
    let _ = writeln!(out, "| short names | {short} |");
    let _ = writeln!(out, "| categories | {categories} |\n");
    for version in &spec.versions {
        let _ = writeln!(
            out,
            "### {} `{}/{}`\n",
            names.kind, spec.group, version.name
        );
        let mut subresources = Vec::new();
        if let Some(sub) = &version.subresources {
            if sub.status.is_some() {
                subresources.push("`status`".to_string());
            }
            if let Some(scale) = &sub.scale {
                subresources.push(format!(
                    "`scale` (replicas `{}`, status `{}`{})",
                    scale.spec_replicas_path,
                    scale.status_replicas_path,
                    scale
                        .label_selector_path
                        .as_deref()
                        .map(|s| format!(", selector `{s}`"))
                        .unwrap_or_default()
                ));
            }
        }
        let _ = writeln!(
            out,
            "Served: {}, storage: {}. Subresources: {}.\n",
            version.served,
            version.storage,
            if subresources.is_empty() {
                "none".to_string()
            } else {
                subresources.join(", ")
            }
        );
        if let Some(columns) = version.additional_printer_columns.as_deref() {
            if !columns.is_empty() {
                let _ = writeln!(out, "Printer columns (`kubectl get`):\n");
                let _ = writeln!(
                    out,
                    "| column | type | JSONPath | priority |\n|---|---|---|---|"
                );
                for c in columns {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} |",
                        cell(&c.name),
                        c.type_,
                        code(&c.json_path),
                        c.priority.unwrap_or(0)
                    );
                }
                out.push('\n');
            }
        }
        let Some(schema) = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        else {
            continue;
        };
        let schema = serde_json::to_value(schema).expect("a schema always serialises");
        for level in levels(&schema) {
            render_level(&level, out);
        }
    }
}

fn render_level(level: &Level, out: &mut String) {
    let _ = writeln!(out, "#### `{}`\n", level.path);
    if !level.description.is_empty() {
        let _ = writeln!(out, "{}\n", cell(&level.description));
    }
    if !level.fields.is_empty() {
        let _ = writeln!(
            out,
            "| field | type | required | default | description | constraints |\n|---|---|---|---|---|---|"
        );
        for f in &level.fields {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                code(&f.path),
                cell(&f.type_),
                if f.required { "yes" } else { "" },
                code(&f.default),
                cell(&f.description),
                cell(&f.constraints)
            );
        }
        out.push('\n');
    }
    if !level.rules.is_empty() {
        let _ = writeln!(out, "Validation rules (CEL):\n");
        let _ = writeln!(out, "| at | rule | message |\n|---|---|---|");
        for r in &level.rules {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                code(&r.path),
                code(&r.rule),
                cell(&r.message)
            );
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> Value {
        json!({
            "description": "A tiny kind.",
            "type": "object",
            "properties": {
                "spec": {
                    "description": "Desired state.",
                    "type": "object",
                    "required": ["mode"],
                    "x-kubernetes-validations": [
                        {"rule": "self.mode != 'off' || size(self.items) == 0", "message": "items need a mode"}
                    ],
                    "properties": {
                        "mode": {
                            "description": "How it runs.",
                            "type": "string",
                            "enum": ["on", "off"],
                            "default": "on"
                        },
                        "items": {
                            "description": "Things to serve.",
                            "type": "array",
                            "maxItems": 4,
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"description": "Item name.", "type": "string", "maxLength": 63},
                                    "weight": {"description": "Share.", "type": "integer", "format": "int32", "minimum": 0.0, "maximum": 100.0}
                                }
                            }
                        },
                        "pod": {
                            "type": "object",
                            "properties": {"containers": {"type": "array", "items": {"type": "object"}}}
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn levels_nest_objects_and_array_elements_with_their_rows_and_rules() {
        let levels = levels(&tiny());
        let paths: Vec<&str> = levels.iter().map(|l| l.path.as_str()).collect();
        assert_eq!(paths, [".", ".spec", ".spec.items[]"]);

        let spec = &levels[1];
        assert_eq!(spec.description, "Desired state.");
        let rows: Vec<(&str, &str, bool, &str, &str)> = spec
            .fields
            .iter()
            .map(|f| {
                (
                    f.path.as_str(),
                    f.type_.as_str(),
                    f.required,
                    f.default.as_str(),
                    f.constraints.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (".spec.items", "[]object", false, "", "max items 4"),
                (".spec.mode", "string", true, "\"on\"", "one of `on`, `off`"),
                (".spec.pod", "object", false, "", ""),
            ]
        );
        assert!(spec.fields[2].description.contains(UPSTREAM_NOTE));
        assert_eq!(
            spec.rules,
            [CelRule {
                path: ".spec".into(),
                rule: "self.mode != 'off' || size(self.items) == 0".into(),
                message: "items need a mode".into(),
            }]
        );

        let items = &levels[2];
        assert_eq!(
            items.fields,
            [
                FieldRow {
                    path: ".spec.items[].name".into(),
                    type_: "string".into(),
                    required: true,
                    default: String::new(),
                    description: "Item name.".into(),
                    constraints: "max length 63".into(),
                },
                FieldRow {
                    path: ".spec.items[].weight".into(),
                    type_: "integer (int32)".into(),
                    required: false,
                    default: String::new(),
                    description: "Share.".into(),
                    constraints: "min 0; max 100".into(),
                },
            ]
        );
    }

    #[test]
    fn rendered_level_escapes_pipes_and_shows_rules() {
        let mut out = String::new();
        for level in levels(&tiny()) {
            render_level(&level, &mut out);
        }
        assert!(out.contains("#### `.spec.items[]`"));
        assert!(out.contains(
            "| `.spec.mode` | string | yes | `\"on\"` | How it runs. | one of `on`, `off` |"
        ));
        assert!(out.contains(
            "| `.spec` | `self.mode != 'off' \\|\\| size(self.items) == 0` | items need a mode |"
        ));
    }

    #[test]
    fn render_of_muster_crds_is_deterministic_and_covers_every_kind() {
        let crds = crate::crd::all();
        let a = render(&crds);
        assert_eq!(a, render(&crate::crd::all()));
        for kind in [
            "ModelServing",
            "ModelServer",
            "ModelRoute",
            "AutoscalingPolicy",
        ] {
            assert!(a.contains(&format!("## {kind}\n")), "{kind} missing");
        }
        assert!(a.contains("#### `.spec.template.roles[]`"));
        // A row a user looks up: ModelServing's replicas, with default and bounds from the types.
        assert!(a.contains(
            "| `.spec.replicas` | integer (int32) |  | `1` | Number of ServingGroups (whole inference instances). | min 0; max 10000 |"
        ));
        assert!(a.contains("| short names | `asp` |"));
    }
}
