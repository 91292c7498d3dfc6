//! Enforcement: regorus over the customer policy and Coffer's framework, with group state.

use regorus::{Engine, PolicyLengthConfig};
use serde_json::{json, Map, Value};

use crate::PolicyError;

/// Coffer's framework, which every generated policy maps its enforcement points to.
pub const FRAMEWORK_REGO: &str = include_str!("../rego/framework.rego");

/// The framework version, declared by `framework.rego` and by every generated policy. It is the
/// version of Azure's framework (hcsshim `framework.rego`) whose semantics Coffer's follows, the
/// value `az confcom acipolicygen` writes into ACI policies.
pub const FRAMEWORK_VERSION: &str = "0.2.3";

/// An enforcement point: a request of the host the agent asks the policy about before acting,
/// named as Azure's framework names its rules (`data.policy.<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EnforcementPoint {
    /// `mount_device`.
    MountDevice,
    /// `unmount_device`.
    UnmountDevice,
    /// `mount_overlay`.
    MountOverlay,
    /// `unmount_overlay`.
    UnmountOverlay,
    /// `create_container`.
    CreateContainer,
    /// `exec_in_container`.
    ExecInContainer,
    /// `exec_external`.
    ExecExternal,
    /// `shutdown_container`.
    ShutdownContainer,
    /// `signal_container_process`.
    SignalContainerProcess,
    /// `get_properties`.
    GetProperties,
    /// `dump_stacks`.
    DumpStacks,
    /// `runtime_logging`.
    RuntimeLogging,
    /// `scratch_mount`.
    ScratchMount,
    /// `scratch_unmount`.
    ScratchUnmount,
    /// `load_fragment`.
    LoadFragment,
    /// `plan9_mount`.
    Plan9Mount,
    /// `plan9_unmount`.
    Plan9Unmount,
}

impl EnforcementPoint {
    /// Every point, in the order of Azure's `api.rego` table (`POINTS`).
    pub const ALL: [EnforcementPoint; 17] = {
        let mut out = [EnforcementPoint::MountDevice; 17];
        let mut i = 0;
        while i < POINTS.len() {
            out[i] = POINTS[i].0;
            i += 1;
        }
        out
    };

    /// The rule's name in a policy.
    pub const fn name(self) -> &'static str {
        match self {
            EnforcementPoint::MountDevice => "mount_device",
            EnforcementPoint::UnmountDevice => "unmount_device",
            EnforcementPoint::MountOverlay => "mount_overlay",
            EnforcementPoint::UnmountOverlay => "unmount_overlay",
            EnforcementPoint::CreateContainer => "create_container",
            EnforcementPoint::ExecInContainer => "exec_in_container",
            EnforcementPoint::ExecExternal => "exec_external",
            EnforcementPoint::ShutdownContainer => "shutdown_container",
            EnforcementPoint::SignalContainerProcess => "signal_container_process",
            EnforcementPoint::GetProperties => "get_properties",
            EnforcementPoint::DumpStacks => "dump_stacks",
            EnforcementPoint::RuntimeLogging => "runtime_logging",
            EnforcementPoint::ScratchMount => "scratch_mount",
            EnforcementPoint::ScratchUnmount => "scratch_unmount",
            EnforcementPoint::LoadFragment => "load_fragment",
            EnforcementPoint::Plan9Mount => "plan9_mount",
            EnforcementPoint::Plan9Unmount => "plan9_unmount",
        }
    }
}

impl std::fmt::Display for EnforcementPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EnforcementPoint {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| PolicyError::UnknownRule(s.into()))
    }
}

/// The enforcement points, and the result used when a policy does not define one (as hcsshim's
/// `api.rego` default results for policies older than the point).
/// The enforcement points: name, the API version that introduced it, and the result used when a
/// policy older than that version does not define it (Azure's `api.rego` table).
const POINTS: [(EnforcementPoint, Version, &str); 17] = [
    (
        EnforcementPoint::MountDevice,
        Version(0, 1, 0),
        r#"{"allowed": false}"#,
    ),
    (
        EnforcementPoint::UnmountDevice,
        Version(0, 2, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::MountOverlay,
        Version(0, 1, 0),
        r#"{"allowed": false}"#,
    ),
    (
        EnforcementPoint::UnmountOverlay,
        Version(0, 6, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::CreateContainer,
        Version(0, 1, 0),
        r#"{"allowed": false, "env_list": null, "allow_stdio_access": false}"#,
    ),
    (
        EnforcementPoint::ExecInContainer,
        Version(0, 2, 0),
        r#"{"allowed": true, "env_list": null}"#,
    ),
    (
        EnforcementPoint::ExecExternal,
        Version(0, 3, 0),
        r#"{"allowed": true, "env_list": null, "allow_stdio_access": false}"#,
    ),
    (
        EnforcementPoint::ShutdownContainer,
        Version(0, 4, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::SignalContainerProcess,
        Version(0, 5, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::GetProperties,
        Version(0, 7, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::DumpStacks,
        Version(0, 7, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::RuntimeLogging,
        Version(0, 8, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::ScratchMount,
        Version(0, 10, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::ScratchUnmount,
        Version(0, 10, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::LoadFragment,
        Version(0, 9, 0),
        r#"{"allowed": false, "add_module": false}"#,
    ),
    (
        EnforcementPoint::Plan9Mount,
        Version(0, 6, 0),
        r#"{"allowed": true}"#,
    ),
    (
        EnforcementPoint::Plan9Unmount,
        Version(0, 6, 0),
        r#"{"allowed": true}"#,
    ),
];

/// A policy API version (`api_version := "0.10.0"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl Version {
    fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

/// Names of the enforcement points.
pub const ENFORCEMENT_POINTS: [&str; 17] = {
    let mut out = [""; 17];
    let mut i = 0;
    while i < POINTS.len() {
        out[i] = POINTS[i].0.name();
        i += 1;
    }
    out
};

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why not (the policy's `reason`), when denied.
    pub reason: Option<Value>,
    /// The rule's full result (e.g. `env_list`, `allow_stdio_access`), without `metadata`.
    pub result: Value,
}

/// A loaded policy with the group's state. Denied requests never change the state.
#[derive(Clone)]
pub struct Enforcer {
    engine: Engine,
    state: Map<String, Value>,
    /// The enforcement points the policy itself defines.
    declared: Vec<EnforcementPoint>,
    /// The policy's `api_version` (`api_svn` in older policies).
    api_version: Version,
}

fn to_regorus(v: &Value) -> Result<regorus::Value, PolicyError> {
    regorus::Value::from_json_str(&v.to_string()).map_err(|e| PolicyError::BadInput(e.to_string()))
}

fn from_regorus(v: &regorus::Value, rule: &str) -> Result<Value, PolicyError> {
    let text = v.to_json_str().map_err(|e| PolicyError::Eval {
        rule: rule.into(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| PolicyError::Eval {
        rule: rule.into(),
        reason: e.to_string(),
    })
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Enforcer {
    /// Load `policy` (Rego text, `package policy`) with Coffer's framework.
    pub fn new(policy: &str) -> Result<Self, PolicyError> {
        let mut engine = Engine::new();
        // Generated policies put all containers on one line: Azure's reach 8 KiB and more.
        let limits = PolicyLengthConfig {
            max_col: std::num::NonZeroU32::MIN.saturating_add((1 << 22) - 1),
            max_file_bytes: std::num::NonZeroUsize::MIN.saturating_add((16 << 20) - 1),
            max_lines: std::num::NonZeroUsize::MIN.saturating_add(1_000_000 - 1),
        };
        engine.set_policy_length_config(limits);
        engine
            .add_policy("coffer/framework.rego".into(), FRAMEWORK_REGO.into())
            .map_err(|e| PolicyError::Load(format!("framework: {e}")))?;
        let package = engine
            .add_policy("policy.rego".into(), policy.into())
            .map_err(|e| PolicyError::Load(e.to_string()))?;
        if package != "data.policy" {
            return Err(PolicyError::Load(format!(
                "the policy must be `package policy`, this one is {}",
                package.trim_start_matches("data.")
            )));
        }
        let mut declared = Vec::new();
        for (point, ..) in POINTS {
            if engine
                .has_declared_rule_rooted_at("policy.rego", point.name())
                .map_err(|e| PolicyError::Load(e.to_string()))?
            {
                declared.push(point);
            }
        }
        let mut enforcer = Enforcer {
            engine,
            state: Map::new(),
            declared,
            api_version: Version(0, 0, 0),
        };
        let version = match enforcer.policy_value("api_version")? {
            Some(v) => Some(v),
            None => enforcer.policy_value("api_svn")?,
        };
        // Without a version the policy is read as current: every point it lacks is denied.
        enforcer.api_version = match version {
            None => Version(u32::MAX, 0, 0),
            Some(v) => v.as_str().and_then(Version::parse).ok_or_else(|| {
                PolicyError::Load(format!("api_version {v} is not a version like \"0.10.0\""))
            })?,
        };
        // Prepare the evaluator now (analysis of policy and framework), not on the first request.
        enforcer.decide(EnforcementPoint::GetProperties, &json!({}))?;
        Ok(enforcer)
    }

    /// Replace the state (e.g. from `--state`).
    pub fn set_state(&mut self, state: Value) -> Result<(), PolicyError> {
        match state {
            Value::Object(m) => {
                self.state = m;
                Ok(())
            }
            Value::Null => {
                self.state = Map::new();
                Ok(())
            }
            _ => Err(PolicyError::BadInput("state must be a JSON object".into())),
        }
    }

    /// A value the policy defines (`data.policy.<name>`), e.g. a Coffer setting; `None` if undefined.
    pub fn policy_value(&mut self, name: &str) -> Result<Option<Value>, PolicyError> {
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PolicyError::BadInput(format!(
                "'{name}' is not a rule name"
            )));
        }
        // A query, not eval_rule: an undefined rule is simply no result, not an error.
        let results = self
            .engine
            .eval_query(format!("data.policy.{name}"), false)
            .map_err(|e| PolicyError::Eval {
                rule: name.into(),
                reason: e.to_string(),
            })?;
        match results.result.first().and_then(|r| r.expressions.first()) {
            Some(expr) if expr.value != regorus::Value::Undefined => {
                from_regorus(&expr.value, name).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Undo what an allowed decision recorded for `key` under `name` (e.g. a device whose mount
    /// then failed): the state must describe what happened, not what was approved.
    pub fn forget(&mut self, name: &str, key: &str) {
        if let Some(Value::Object(m)) = self.state.get_mut(name) {
            m.remove(key);
        }
    }

    /// The group state (`data.metadata`).
    pub fn state(&self) -> Value {
        Value::Object(self.state.clone())
    }

    /// [`Enforcer::decide`] for a point named by a string (`coffer policy eval`, tests): an
    /// unknown name is [`PolicyError::UnknownRule`].
    pub fn decide_named(&mut self, rule: &str, input: &Value) -> Result<Decision, PolicyError> {
        self.decide(rule.parse()?, input)
    }

    /// Ask the point `input` is for ([`crate::input`]): what the agent calls.
    pub fn ask(&mut self, input: &crate::Input<'_>) -> Result<Decision, PolicyError> {
        let value = serde_json::to_value(input)
            .map_err(|e| PolicyError::BadInput(format!("{}: {e}", input.point().name())))?;
        self.decide(input.point(), &value)
    }

    /// Decide `point` for `input`; apply the result's metadata updates only when allowed.
    pub fn decide(
        &mut self,
        point: EnforcementPoint,
        input: &Value,
    ) -> Result<Decision, PolicyError> {
        let (_, introduced, default) = POINTS
            .iter()
            .find(|(p, ..)| *p == point)
            .copied()
            .ok_or_else(|| PolicyError::UnknownRule(point.name().into()))?;
        let rule = point.name();
        let declared = self.declared.contains(&point);
        if !declared && self.api_version >= introduced {
            // A policy written for an API that has this point but does not define it: deny, as
            // Azure's framework does (its defaults are only for policies older than the point).
            return Ok(Decision {
                allowed: false,
                reason: Some(
                    json!({ "errors": [format!("rule for {rule} is missing from policy")] }),
                ),
                result: json!({ "allowed": false }),
            });
        }
        let mut input = match input {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            _ => {
                return Err(PolicyError::BadInput(format!(
                    "{rule}: input must be a JSON object"
                )))
            }
        };
        if input.contains_key("metadata") {
            return Err(PolicyError::BadInput(format!(
                "{rule}: input must not carry 'metadata' (the group state is the engine's)"
            )));
        }
        input.insert("rule".into(), json!(rule));
        input.insert("name".into(), json!(rule));
        input.insert("metadata".into(), Value::Object(self.state.clone()));
        // Only the input changes between requests: data stays fixed, so regorus keeps its
        // prepared schedule and a decision costs an evaluation, not a re-analysis.
        self.engine.set_input(to_regorus(&Value::Object(input))?);

        let eval = |engine: &mut Engine, path: String| -> Result<Value, PolicyError> {
            let v = engine.eval_rule(path).map_err(|e| PolicyError::Eval {
                rule: rule.into(),
                reason: e.to_string(),
            })?;
            if v == regorus::Value::Undefined {
                return Ok(Value::Null);
            }
            from_regorus(&v, rule)
        };
        let mut result = if declared {
            match eval(&mut self.engine, format!("data.policy.{rule}")) {
                Ok(v) => v,
                // regorus reports a declared rule with no value for this input as an error.
                Err(e) => {
                    return Ok(Decision {
                        allowed: false,
                        reason: Some(json!({ "errors": [format!("{rule} gave no result: {e}")] })),
                        result: json!({ "allowed": false }),
                    })
                }
            }
        } else {
            Value::Null
        };
        if result.is_null() && declared {
            // Declared but without a result for this input: nothing allowed it.
            result = json!({ "allowed": false });
        } else if result.is_null() {
            result = serde_json::from_str(default).map_err(|e| PolicyError::Eval {
                rule: rule.into(),
                reason: e.to_string(),
            })?;
        }
        let allowed = result
            .get("allowed")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let metadata = match &mut result {
            Value::Object(m) => m.remove("metadata"),
            _ => None,
        };
        if allowed {
            if let Some(updates) = metadata {
                let mut next = self.state.clone();
                apply_metadata(&mut next, &updates, rule)?;
                self.state = next;
            }
            return Ok(Decision {
                allowed,
                reason: None,
                result,
            });
        }
        // A policy need not define `reason` (regorus reports an undefined rule as an error).
        let mut reason = eval(&mut self.engine, "data.policy.reason".into()).unwrap_or(Value::Null);
        let empty = reason
            .get("errors")
            .and_then(Value::as_array)
            .is_some_and(|e| e.is_empty());
        if reason.is_null() || empty {
            let errors = eval(&mut self.engine, "data.framework.errors".into())?;
            reason = match errors.as_array() {
                Some(e) if !e.is_empty() => json!({ "errors": errors }),
                _ => json!({ "errors": [format!("{rule} denied by policy")] }),
            };
        }
        Ok(Decision {
            allowed,
            reason: Some(reason),
            result,
        })
    }
}

/// Apply `[{"name","action","key","value"}]` to the state.
fn apply_metadata(
    state: &mut Map<String, Value>,
    updates: &Value,
    rule: &str,
) -> Result<(), PolicyError> {
    let bad = |why: &str| PolicyError::Eval {
        rule: rule.into(),
        reason: format!("invalid metadata update: {why}"),
    };
    let list = updates.as_array().ok_or_else(|| bad("not a list"))?;
    for u in list {
        let name = u
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no name"))?;
        let key = u
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no key"))?;
        let action = u
            .get("action")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no action"))?;
        let entry = state
            .entry(name.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        let map = entry
            .as_object_mut()
            .ok_or_else(|| bad("state entry is not an object"))?;
        match action {
            "add" | "update" => {
                let value = u.get("value").cloned().unwrap_or(Value::Null);
                map.insert(key.to_string(), value);
            }
            "remove" => {
                map.remove(key);
            }
            other => return Err(bad(&format!("unknown action {other}"))),
        }
    }
    Ok(())
}
