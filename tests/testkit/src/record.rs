//! Per-pod records as a user's tooling reads them: checked against their published schema.

/// Panics, listing every violation, unless `rec` matches `pod-record.schema.json`.
pub fn assert_valid(rec: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(include_str!(
        "../../../crates/netready-record/pod-record.schema.json"
    ))
    .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
    let errors: Vec<String> = validator
        .iter_errors(rec)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "record does not match its schema: {errors:#?}"
    );
}
