//! Plugin configs checked against the JSON Schema in the plugin's manifest: the subset that
//! describes configs (type, properties, required, additionalProperties as false or as the
//! schema of a map's values, items, enum, minimum, maximum). Errors name the path of the
//! value at fault, `config.fields[2]`.

use serde_json::Value;

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// `Ok` when `value` satisfies `schema`; otherwise the first problem, naming `path`.
pub fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Ok(());
    };
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !type_matches(t, value) {
            return Err(format!("{path}: expected {t}, found {value}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!(
                "{path}: {value} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                return Err(format!("{path}: {n} is under the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                return Err(format!("{path}: {n} is over the maximum {max}"));
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{path}.{name}: required"));
                }
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => check(s, v, &format!("{path}.{name}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{path}.{name}: not a setting of this plugin"));
                    }
                    // A map's values, each against one schema.
                    Some(s @ Value::Object(_)) => check(s, v, &format!("{path}.{name}"))?,
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check(items, v, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_checked_and_errors_name_the_path() {
        let schema = json!({
            "type": "object", "additionalProperties": false, "required": ["min"],
            "properties": {
                "min": {"type": "integer", "minimum": 0},
                "fields": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["a", "b"]}
            }
        });
        assert!(check(
            &schema,
            &json!({"min": 3, "fields": ["x"], "mode": "a"}),
            "config"
        )
        .is_ok());
        let err = |v: Value| check(&schema, &v, "config").expect_err("invalid");
        assert_eq!(err(json!({})), "config.min: required");
        assert_eq!(
            err(json!({"min": -1})),
            "config.min: -1 is under the minimum 0"
        );
        assert_eq!(
            err(json!({"min": 1, "fields": ["x", 2]})),
            "config.fields[1]: expected string, found 2"
        );
        assert_eq!(
            err(json!({"min": 1, "extra": true})),
            "config.extra: not a setting of this plugin"
        );
        assert!(err(json!({"min": 1, "mode": "c"})).starts_with("config.mode: \"c\" is not one of"));
    }
}
