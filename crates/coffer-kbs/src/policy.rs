//! Release policies, Azure Key Vault grammar (version 1.0.0):
//! `{"version":"1.0.0","anyOf":[{"authority":ISS,"allOf"|"anyOf":[conditions]}]}` where a condition
//! is `{"claim":NAME,"equals":VALUE}` or a nested `allOf`/`anyOf`. Claim names use dot notation
//! into nested objects; a missing claim makes its condition false.

use serde_json::{Map, Value};

/// Why a policy is malformed (reported at upload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("release policy: {0}")]
pub struct PolicyError(pub String);

/// A condition of a policy that the claims do not meet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Unmet {
    /// The claim is absent.
    #[error("claim '{claim}' is missing (policy requires {want})")]
    Missing {
        /// Claim name (dot notation).
        claim: String,
        /// The value the policy requires.
        want: Box<Value>,
    },
    /// The claim has another value.
    #[error("claim '{claim}' is {got}, policy requires {want}")]
    Differs {
        /// Claim name (dot notation).
        claim: String,
        /// Its value in the token.
        got: Box<Value>,
        /// The value the policy requires.
        want: Box<Value>,
    },
    /// No branch of an `anyOf` holds; why, branch by branch.
    #[error("none of anyOf holds: {}", join(.0))]
    NoneOf(Vec<Unmet>),
    /// A rule is for another authority than the token's issuer.
    #[error("authority {0} is not the token issuer")]
    OtherAuthority(String),
}

/// Why a policy refuses a token's claims: one [`Unmet`] per authority rule, in policy order.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", join(.0))]
pub struct Denied(pub Vec<Unmet>);

fn join(list: &[Unmet]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A condition.
#[derive(Clone, Debug, PartialEq)]
enum Condition {
    Equals { claim: String, value: Value },
    AllOf(Vec<Condition>),
    AnyOf(Vec<Condition>),
}

/// A parsed release policy.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleasePolicy {
    rules: Vec<(String, Condition)>,
    source: Value,
}

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn parse_condition(v: &Value, at: &str) -> Result<Condition, PolicyError> {
    let m = v
        .as_object()
        .ok_or_else(|| PolicyError(format!("{at}: a condition must be an object")))?;
    let all = get_ci(m, "allOf");
    let any = get_ci(m, "anyOf");
    if let Some(claim) = get_ci(m, "claim") {
        let claim = claim
            .as_str()
            .ok_or_else(|| PolicyError(format!("{at}.claim must be a string")))?;
        if claim.is_empty() {
            return Err(PolicyError(format!("{at}.claim is empty")));
        }
        for op in [
            "notEquals",
            "less",
            "lessOrEquals",
            "greater",
            "greaterOrEquals",
            "exists",
        ] {
            if get_ci(m, op).is_some() {
                return Err(PolicyError(format!(
                    "{at}: operator '{op}' is not supported (only 'equals')"
                )));
            }
        }
        let value = get_ci(m, "equals")
            .ok_or_else(|| PolicyError(format!("{at}: condition on '{claim}' has no 'equals'")))?;
        if !(value.is_string() || value.is_number() || value.is_boolean()) {
            return Err(PolicyError(format!(
                "{at}.equals must be a string, number or boolean"
            )));
        }
        if m.len() != 2 {
            return Err(PolicyError(format!(
                "{at}: a claim condition has exactly 'claim' and 'equals'"
            )));
        }
        return Ok(Condition::Equals {
            claim: claim.to_string(),
            value: value.clone(),
        });
    }
    match (all, any) {
        (Some(_), Some(_)) => Err(PolicyError(format!("{at}: allOf and anyOf together"))),
        (Some(list), None) => Ok(Condition::AllOf(parse_list(list, &format!("{at}.allOf"))?)),
        (None, Some(list)) => Ok(Condition::AnyOf(parse_list(list, &format!("{at}.anyOf"))?)),
        (None, None) => Err(PolicyError(format!("{at}: expected claim, allOf or anyOf"))),
    }
}

fn parse_list(v: &Value, at: &str) -> Result<Vec<Condition>, PolicyError> {
    let list = v
        .as_array()
        .ok_or_else(|| PolicyError(format!("{at} must be a list")))?;
    if list.is_empty() {
        return Err(PolicyError(format!("{at} is empty")));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| parse_condition(c, &format!("{at}[{i}]")))
        .collect()
}

/// Look a dotted claim name up in the claims.
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Equality as Key Vault applies it: policy values are often strings for boolean and number
/// claims ("false", "0"), so scalars compare by their text.
fn scalar_eq(claim: &Value, want: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match (text(claim), text(want)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

impl Condition {
    fn eval(&self, claims: &Map<String, Value>) -> Result<(), Unmet> {
        match self {
            Condition::Equals { claim, value } => match lookup(claims, claim) {
                None => Err(Unmet::Missing {
                    claim: claim.clone(),
                    want: Box::new(value.clone()),
                }),
                Some(v) if scalar_eq(v, value) => Ok(()),
                Some(v) => Err(Unmet::Differs {
                    claim: claim.clone(),
                    got: Box::new(v.clone()),
                    want: Box::new(value.clone()),
                }),
            },
            Condition::AllOf(list) => list.iter().try_for_each(|c| c.eval(claims)),
            Condition::AnyOf(list) => {
                let mut why = Vec::new();
                for c in list {
                    match c.eval(claims) {
                        Ok(()) => return Ok(()),
                        Err(e) => why.push(e),
                    }
                }
                Err(Unmet::NoneOf(why))
            }
        }
    }
}

impl ReleasePolicy {
    /// Parse a policy document (JSON object), rejecting malformed ones with the reason.
    pub fn parse(v: &Value) -> Result<Self, PolicyError> {
        let m = v
            .as_object()
            .ok_or_else(|| PolicyError("must be a JSON object".into()))?;
        match get_ci(m, "version").and_then(Value::as_str) {
            Some("1.0.0") | Some("0.2") => {}
            Some(other) => {
                return Err(PolicyError(format!(
                    "version '{other}' is not supported (1.0.0)"
                )))
            }
            None => return Err(PolicyError("version is missing".into())),
        }
        let list = get_ci(m, "anyOf")
            .ok_or_else(|| PolicyError("anyOf (the list of authorities) is missing".into()))?;
        let list = list
            .as_array()
            .ok_or_else(|| PolicyError("anyOf must be a list".into()))?;
        if list.is_empty() {
            return Err(PolicyError(
                "anyOf is empty: the key could never be released".into(),
            ));
        }
        let mut rules = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let at = format!("anyOf[{i}]");
            let am = a
                .as_object()
                .ok_or_else(|| PolicyError(format!("{at} must be an object")))?;
            let authority = get_ci(am, "authority")
                .and_then(Value::as_str)
                .ok_or_else(|| PolicyError(format!("{at}.authority is missing")))?;
            let mut rest = am.clone();
            rest.retain(|k, _| !k.eq_ignore_ascii_case("authority"));
            let cond = parse_condition(&Value::Object(rest), &at)?;
            if matches!(cond, Condition::Equals { .. }) {
                return Err(PolicyError(format!(
                    "{at}: an authority needs allOf or anyOf"
                )));
            }
            rules.push((authority.trim_end_matches('/').to_string(), cond));
        }
        Ok(ReleasePolicy {
            rules,
            source: v.clone(),
        })
    }

    /// The policy as uploaded.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Decide for verified token claims from `issuer`: Ok, or the failed condition.
    pub fn evaluate(&self, issuer: &str, claims: &Map<String, Value>) -> Result<(), Denied> {
        let issuer = issuer.trim_end_matches('/');
        let mut why = Vec::new();
        for (authority, cond) in &self.rules {
            if authority != issuer {
                why.push(Unmet::OtherAuthority(authority.clone()));
                continue;
            }
            match cond.eval(claims) {
                Ok(()) => return Ok(()),
                Err(e) => why.push(e),
            }
        }
        Err(Denied(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({"x-ms-sevsnpvm-hostdata": "ab", "x-ms-sevsnpvm-is-debuggable": false, "x-ms-sevsnpvm-vmpl": 0,
               "x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm"}})
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn grants_and_denies_with_the_failed_condition() {
        let p = ReleasePolicy::parse(
            &json!({"version": "1.0.0", "anyOf": [{"authority": "https://a/", "allOf": [
            {"claim": "x-ms-sevsnpvm-hostdata", "equals": "ab"},
            {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
            {"claim": "x-ms-sevsnpvm-vmpl", "equals": 0},
            {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"}]}]}),
        )
        .unwrap();
        assert_eq!(p.evaluate("https://a", &claims()), Ok(()));
        assert_eq!(
            p.evaluate("https://b", &claims()),
            Err(Denied(vec![Unmet::OtherAuthority("https://a".into())]))
        );
        let mut c = claims();
        c.insert("x-ms-sevsnpvm-hostdata".into(), json!("cd"));
        assert_eq!(
            p.evaluate("https://a", &c),
            Err(Denied(vec![Unmet::Differs {
                claim: "x-ms-sevsnpvm-hostdata".into(),
                got: Box::new(json!("cd")),
                want: Box::new(json!("ab")),
            }]))
        );
        let err = p.evaluate("https://a", &c).unwrap_err().to_string();
        assert!(err.contains("x-ms-sevsnpvm-hostdata"), "{err}");
        c.remove("x-ms-sevsnpvm-hostdata");
        assert_eq!(
            p.evaluate("https://a", &c),
            Err(Denied(vec![Unmet::Missing {
                claim: "x-ms-sevsnpvm-hostdata".into(),
                want: Box::new(json!("ab")),
            }]))
        );
    }

    #[test]
    fn malformed_policies_are_rejected_with_reason() {
        for (bad, why) in [
            (json!([]), "object"),
            (json!({"anyOf": []}), "version"),
            (json!({"version": "9", "anyOf": []}), "not supported"),
            (json!({"version": "1.0.0", "anyOf": []}), "empty"),
            (
                json!({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "equals": "b"}]}]}),
                "authority",
            ),
            (
                json!({"version": "1.0.0", "anyOf": [{"authority": "x", "allOf": [{"claim": "a", "greater": 1}]}]}),
                "not supported",
            ),
            (
                json!({"version": "1.0.0", "anyOf": [{"authority": "x", "allOf": [{"claim": "a", "equals": {"o": 1}}]}]}),
                "string, number",
            ),
            (
                json!({"version": "1.0.0", "anyOf": [{"authority": "x", "allOf": [], "anyOf": []}]}),
                "together",
            ),
        ] {
            let e = ReleasePolicy::parse(&bad).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
