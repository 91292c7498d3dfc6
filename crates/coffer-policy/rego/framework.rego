# Coffer's policy framework: the semantics behind every enforcement point.
#
# A customer policy (package policy) lists what may run (`containers`, `allow_*` switches) and maps
# each enforcement point to data.framework.<point>. This file decides, from the request in `input`
# and the group's state, whether the request is allowed. A result may carry `metadata` updates
# ({"name","action":"add"|"update"|"remove","key","value"}) that the engine applies to the state
# only when the request is allowed. `errors` explains every denial.
#
# The engine passes the state as `input.metadata` (never taken from the host: the engine refuses
# requests that carry one), so that the static `data` never changes and the evaluator stays
# prepared between requests. State kept there:
#   devices        mount target -> dm-verity root hash of the layer mounted there
#   matches        container id -> policy containers it may still be (narrowed at create)
#   overlayTargets overlay target -> container id
#   started        container id -> true
#   scratch        scratch target -> true
package framework

import rego.v1

# The version of Azure's framework whose semantics this follows; generated policies declare the same
# (coffer_policy::FRAMEWORK_VERSION).
framework_version := "0.2.3"

# ---------------------------------------------------------------- policy contents and state

default policy_containers := []

policy_containers := data.policy.containers

default policy_external_processes := []

policy_external_processes := data.policy.external_processes

default allow_properties_access := false

allow_properties_access := data.policy.allow_properties_access

default allow_dump_stacks := false

allow_dump_stacks := data.policy.allow_dump_stacks

default allow_runtime_logging := false

allow_runtime_logging := data.policy.allow_runtime_logging

default allow_environment_variable_dropping := false

allow_environment_variable_dropping := data.policy.allow_environment_variable_dropping

default allow_unencrypted_scratch := false

allow_unencrypted_scratch := data.policy.allow_unencrypted_scratch

default allow_capability_dropping := false

allow_capability_dropping := data.policy.allow_capability_dropping

metadata := object.get(input, "metadata", {})

devices := object.get(metadata, "devices", {})

matches := object.get(metadata, "matches", {})

overlay_targets := object.get(metadata, "overlayTargets", {})

started := object.get(metadata, "started", {})

scratch := object.get(metadata, "scratch", {})

# Patterns are anchored: a rule matches the whole string, never a part of it.
anchored(pattern) := concat("", ["^(?:", pattern, ")$"])

# ---------------------------------------------------------------- layers

layer_in_policy(hash) if {
	some c in policy_containers
	some layer in c.layers
	layer == hash
}

mount_path_ok if not input.mountPathRegex

mount_path_ok if regex.match(anchored(input.mountPathRegex), input.target)

default mount_device := {"allowed": false}

mount_device := {"allowed": true, "metadata": [{"name": "devices", "action": "add", "key": input.target, "value": input.deviceHash}]} if {
	not devices[input.target]
	mount_path_ok
	layer_in_policy(input.deviceHash)
}

default unmount_device := {"allowed": false}

unmount_device := {"allowed": true, "metadata": [{"name": "devices", "action": "remove", "key": input.unmountTarget}]} if {
	devices[input.unmountTarget]
}

# layerPaths come top layer first; the policy lists layers base first.
layers_match(c) if {
	count(c.layers) == count(input.layerPaths)
	every i, path in input.layerPaths {
		devices[path] == c.layers[(count(c.layers) - i) - 1]
	}
}

overlay_candidates := [c | some c in policy_containers; layers_match(c)]

default mount_overlay := {"allowed": false}

mount_overlay := {"allowed": true, "metadata": [
	{"name": "matches", "action": "add", "key": input.containerID, "value": overlay_candidates},
	{"name": "overlayTargets", "action": "add", "key": input.target, "value": input.containerID},
]} if {
	not matches[input.containerID]
	not overlay_targets[input.target]
	count(overlay_candidates) > 0
}

default unmount_overlay := {"allowed": false}

unmount_overlay := {"allowed": true, "metadata": [{"name": "overlayTargets", "action": "remove", "key": input.unmountTarget}]} if {
	overlay_targets[input.unmountTarget]
}

# ---------------------------------------------------------------- containers

command_ok(c) if c.command == input.argList

working_dir_ok(c) if c.working_dir == input.workingDir

privileged_ok(c) if not input.privileged

privileged_ok(c) if {
	input.privileged
	c.allow_elevated
}

no_new_privileges_ok(c) if not c.no_new_privileges

no_new_privileges_ok(c) if {
	c.no_new_privileges
	input.noNewPrivileges
}

idname_ok(rule, _) if rule.strategy == "any"

idname_ok(rule, value) if {
	rule.strategy == "id"
	rule.pattern == value.id
}

idname_ok(rule, value) if {
	rule.strategy == "name"
	rule.pattern == value.name
}

idname_ok(rule, value) if {
	rule.strategy == "re2"
	regex.match(anchored(rule.pattern), value.name)
}

input_groups := object.get(input, "groups", [])

# Groups pinned by id are the process's groups: each must be asked for (the host cannot drop a
# supplementary group, e.g. the fsGroup), and a pinned first (primary) group must come first (the
# host cannot swap the primary group with a supplementary one), and none twice (nor the primary
# group again as a supplementary one). With Azure's policies, whose only
# group rule is the primary group, this is what the request carries anyway.
id_group_present(rule) if rule.strategy != "id"

id_group_present(rule) if {
	rule.strategy == "id"
	some g in input_groups
	g.id == rule.pattern
}

primary_group_ok(c) if count(c.user.group_idnames) == 0

primary_group_ok(c) if c.user.group_idnames[0].strategy != "id"

primary_group_ok(c) if {
	c.user.group_idnames[0].strategy == "id"
	input_groups[0].id == c.user.group_idnames[0].pattern
}

user_ok(c) if {
	idname_ok(c.user.user_idname, input.user)
	every g in input_groups {
		some rule in c.user.group_idnames
		idname_ok(rule, g)
	}
	every rule in c.user.group_idnames {
		id_group_present(rule)
	}
	count({g.id | some g in input_groups}) == count(input_groups)
	primary_group_ok(c)
	object.get(input, "umask", c.user.umask) == c.user.umask
}

# Coffer's policies pin whether the root file system is read-only, both ways (a policy without
# the field: writable).
read_only_root_ok(c) if {
	object.get(input, "readOnlyRootFilesystem", false) == object.get(c, "read_only_root_filesystem", false)
}

mount_matches(pm, m) if {
	pm.destination == m.destination
	pm.type == m.type
	regex.match(anchored(pm.source), m.source)
	{o | some o in pm.options} == {o | some o in m.options}
}

mount_ok(c, m) if {
	some pm in c.mounts
	mount_matches(pm, m)
}

mounts_ok(c) if {
	every m in object.get(input, "mounts", []) {
		mount_ok(c, m)
	}
}

# Coffer's policies pin the limits a container runs with; policies without `resources` do not.
resources_ok(c) if not c.resources

resources_ok(c) if object.get(input, "resources", null) == c.resources

cap_kinds := ["ambient", "bounding", "effective", "inheritable", "permitted"]

input_caps(kind) := {x | some x in object.get(object.get(input, "capabilities", {}), kind, [])}

policy_caps(c, kind) := {x | some x in object.get(c.capabilities, kind, [])}

caps_within(c) if {
	every kind in cap_kinds {
		count(input_caps(kind) - policy_caps(c, kind)) == 0
	}
}

# Capabilities the container gets: as asked when within the policy; with dropping allowed, the
# part of the request the policy allows.
caps_result(c) := object.get(input, "capabilities", {}) if caps_within(c)

caps_result(c) := {kind: sort([x | some x in input_caps(kind) & policy_caps(c, kind)]) | some kind in cap_kinds} if {
	not caps_within(c)
	allow_capability_dropping
}

caps_ok(c) if caps_result(c)

env_rule_ok(rule, env) if {
	rule.strategy == "string"
	rule.pattern == env
}

env_rule_ok(rule, env) if {
	rule.strategy == "re2"
	regex.match(anchored(rule.pattern), env)
}

env_allowed(c, env) if {
	some rule in c.env_rules
	env_rule_ok(rule, env)
}

input_env := object.get(input, "envList", [])

# Exact-string rules are looked up in a set; only the rest are tried as regular expressions.
env_allowed_with(strings, _, env) if strings[env]

env_allowed_with(strings, patterns, env) if {
	not strings[env]
	some p in patterns
	regex.match(p, env)
}

allowed_env(c) := [e |
	strings := {r.pattern | some r in c.env_rules; r.strategy == "string"}
	patterns := [anchored(r.pattern) | some r in c.env_rules; r.strategy == "re2"]
	some e in input_env
	env_allowed_with(strings, patterns, e)
]

required_missing(c, list) if {
	some rule in c.env_rules
	rule.required
	not rule_satisfied(rule, list)
}

rule_satisfied(rule, list) if {
	some e in list
	env_rule_ok(rule, e)
}

env_count_ok(list) if count(list) == count(input_env)

env_count_ok(list) if {
	allow_environment_variable_dropping
	count(list) < count(input_env)
}

# The environment the process gets: all of it when every variable is allowed; with dropping
# allowed, only the allowed ones. Required variables must be present either way.
env_result(c) := list if {
	list := allowed_env(c)
	env_count_ok(list)
	not required_missing(c, list)
}

container_candidates := object.get(matches, input.containerID, [])

# Candidates that pass every check, each with the environment it would get.
create_matches := [{"container": c, "env": env} |
	some c in container_candidates
	command_ok(c)
	working_dir_ok(c)
	privileged_ok(c)
	no_new_privileges_ok(c)
	user_ok(c)
	read_only_root_ok(c)
	mounts_ok(c)
	resources_ok(c)
	caps_ok(c)
	env := env_result(c)
]

create_candidates := [m.container | some m in create_matches]

default create_container := {"allowed": false}

create_container := {
	"allowed": true,
	"env_list": env_list,
	"caps_list": caps_result(create_candidates[0]),
	"allow_stdio_access": stdio,
	"metadata": [
		{"name": "matches", "action": "update", "key": input.containerID, "value": create_candidates},
		{"name": "started", "action": "add", "key": input.containerID, "value": true},
	],
} if {
	not started[input.containerID]
	matches[input.containerID]
	count(create_matches) > 0
	envs := {m.env | some m in create_matches}
	count(envs) == 1
	some env_list in envs
	stdios := {c.allow_stdio_access | some c in create_candidates}
	count(stdios) == 1
	some stdio in stdios
}

exec_process_ok(c) if {
	some p in c.exec_processes
	p.command == input.argList
}

# An exec'd process runs with the container's environment plus its own: the container already
# has the required variables, so an exec need not repeat them.
exec_env_result(c) := list if {
	list := allowed_env(c)
	env_count_ok(list)
}

exec_matches := [{"container": c, "env": env} |
	some c in container_candidates
	exec_process_ok(c)
	working_dir_ok(c)
	env := exec_env_result(c)
]

default exec_in_container := {"allowed": false}

exec_in_container := {"allowed": true, "env_list": exec_matches[0].env, "allow_stdio_access": exec_matches[0].container.allow_stdio_access} if {
	started[input.containerID]
	count(exec_matches) > 0
}

external_command_matches := [p | some p in policy_external_processes; p.command == input.argList]

external_working_dir_ok(p) if object.get(p, "working_dir", input.workingDir) == input.workingDir

# An external process gets its own environment rules, as a container's process does (required
# variables included): a process without rules gets no environment.
external_matches := [{"process": p, "env": env} |
	some p in external_command_matches
	external_working_dir_ok(p)
	env := env_result(p)
]

default exec_external := {"allowed": false}

exec_external := {"allowed": true, "env_list": external_matches[0].env, "allow_stdio_access": object.get(external_matches[0].process, "allow_stdio_access", false)} if {
	count(external_matches) > 0
}

default shutdown_container := {"allowed": false}

shutdown_container := {"allowed": true, "metadata": [
	{"name": "started", "action": "remove", "key": input.containerID},
	{"name": "matches", "action": "remove", "key": input.containerID},
]} if {
	started[input.containerID]
}

signal_ok if {
	input.isInitProcess
	some c in container_candidates
	input.signal in c.signals
}

signal_ok if {
	not input.isInitProcess
	some c in container_candidates
	some p in c.exec_processes
	p.command == input.argList
	input.signal in object.get(p, "signals", [])
}

default signal_container_process := {"allowed": false}

signal_container_process := {"allowed": true} if {
	started[input.containerID]
	signal_ok
}

# ---------------------------------------------------------------- switches and the rest

get_properties := {"allowed": allow_properties_access}

dump_stacks := {"allowed": allow_dump_stacks}

runtime_logging := {"allowed": allow_runtime_logging}

scratch_encryption_ok if input.encrypted

scratch_encryption_ok if allow_unencrypted_scratch

default scratch_mount := {"allowed": false}

scratch_mount := {"allowed": true, "metadata": [{"name": "scratch", "action": "add", "key": input.target, "value": true}]} if {
	not scratch[input.target]
	scratch_encryption_ok
}

default scratch_unmount := {"allowed": false}

scratch_unmount := {"allowed": true, "metadata": [{"name": "scratch", "action": "remove", "key": input.unmountTarget}]} if {
	scratch[input.unmountTarget]
}

# Coffer loads no policy fragments and has no plan9 shares.
load_fragment := {"allowed": false, "add_module": false}

plan9_mount := {"allowed": false}

plan9_unmount := {"allowed": false}

# ---------------------------------------------------------------- reasons for denials

rule_is(names) if input.rule in names

errors contains "deviceHash is not a layer of any container in the policy" if {
	rule_is({"mount_device"})
	not layer_in_policy(input.deviceHash)
}

errors contains "a device is already mounted at target" if {
	rule_is({"mount_device"})
	devices[input.target]
}

errors contains "target does not match mountPathRegex" if {
	rule_is({"mount_device"})
	not mount_path_ok
}

errors contains "no device is mounted at unmountTarget" if {
	rule_is({"unmount_device"})
	not devices[input.unmountTarget]
}

errors contains "no container in the policy has these layers in this order" if {
	rule_is({"mount_overlay"})
	count(overlay_candidates) == 0
}

errors contains "the container already has an overlay" if {
	rule_is({"mount_overlay"})
	matches[input.containerID]
}

errors contains "an overlay is already mounted at target" if {
	rule_is({"mount_overlay"})
	overlay_targets[input.target]
}

errors contains "no overlay is mounted at unmountTarget" if {
	rule_is({"unmount_overlay"})
	not overlay_targets[input.unmountTarget]
}

errors contains "the container has no overlay (mount_overlay must come first)" if {
	rule_is({"create_container"})
	not matches[input.containerID]
}

errors contains "the container was already created" if {
	rule_is({"create_container"})
	started[input.containerID]
}

errors contains "invalid command" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not command_ok(c)
	}
}

errors contains "invalid working directory" if {
	rule_is({"create_container", "exec_in_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not working_dir_ok(c)
	}
}

errors contains "privileged (elevated) containers are not allowed" if {
	rule_is({"create_container"})
	input.privileged
	count(container_candidates) > 0
	every c in container_candidates {
		not c.allow_elevated
	}
}

errors contains "no_new_privileges is required" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not no_new_privileges_ok(c)
	}
}

errors contains "invalid resources (memory and CPU limits differ from the policy's)" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not resources_ok(c)
	}
}

errors contains "invalid user or groups" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not user_ok(c)
	}
}

errors contains "invalid read-only root file system (the policy pins readOnlyRootFilesystem)" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not read_only_root_ok(c)
	}
}

errors contains sprintf("mount not allowed: %s", [m.destination]) if {
	rule_is({"create_container"})
	some m in object.get(input, "mounts", [])
	count(container_candidates) > 0
	every c in container_candidates {
		not mount_ok(c, m)
	}
}

errors contains "capabilities not allowed" if {
	rule_is({"create_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not caps_ok(c)
	}
}

errors contains sprintf("environment variable not allowed: %s", [name]) if {
	rule_is({"create_container", "exec_in_container"})
	not allow_environment_variable_dropping
	some e in input_env
	count(container_candidates) > 0
	every c in container_candidates {
		not env_allowed(c, e)
	}
	name := split(e, "=")[0]
}

# An exec'd process need not repeat the container's required variables (exec_env_result).
errors contains sprintf("required environment variable missing: %s", [rule.pattern]) if {
	rule_is({"create_container"})
	some c in container_candidates
	some rule in c.env_rules
	rule.required
	not rule_satisfied(rule, allowed_env(c))
}

errors contains "candidate containers disagree (environment or stdio access)" if {
	rule_is({"create_container"})
	count(create_matches) > 1
	count({m.env | some m in create_matches}) + count({c.allow_stdio_access | some c in create_candidates}) > 2
}

errors contains "the container is not running" if {
	rule_is({"exec_in_container", "shutdown_container", "signal_container_process"})
	not started[input.containerID]
}

errors contains "process not in the container's exec_processes" if {
	rule_is({"exec_in_container"})
	count(container_candidates) > 0
	every c in container_candidates {
		not exec_process_ok(c)
	}
}

errors contains "process not in external_processes" if {
	rule_is({"exec_external"})
	count(external_command_matches) == 0
}

errors contains "invalid working directory" if {
	rule_is({"exec_external"})
	count(external_command_matches) > 0
	every p in external_command_matches {
		not external_working_dir_ok(p)
	}
}

errors contains sprintf("environment variable not allowed: %s", [name]) if {
	rule_is({"exec_external"})
	not allow_environment_variable_dropping
	some e in input_env
	count(external_command_matches) > 0
	every p in external_command_matches {
		not env_allowed(p, e)
	}
	name := split(e, "=")[0]
}

errors contains sprintf("required environment variable missing: %s", [rule.pattern]) if {
	rule_is({"exec_external"})
	some p in external_command_matches
	some rule in p.env_rules
	rule.required
	not rule_satisfied(rule, allowed_env(p))
}

errors contains sprintf("signal %v not allowed for this process", [input.signal]) if {
	rule_is({"signal_container_process"})
	started[input.containerID]
	not signal_ok
}

errors contains "properties access not allowed (allow_properties_access)" if {
	rule_is({"get_properties"})
	not allow_properties_access
}

errors contains "dumping stacks not allowed (allow_dump_stacks)" if {
	rule_is({"dump_stacks"})
	not allow_dump_stacks
}

errors contains "runtime logging not allowed (allow_runtime_logging)" if {
	rule_is({"runtime_logging"})
	not allow_runtime_logging
}

errors contains "unencrypted scratch not allowed (allow_unencrypted_scratch)" if {
	rule_is({"scratch_mount"})
	not scratch_encryption_ok
}

errors contains "scratch already mounted at target" if {
	rule_is({"scratch_mount"})
	scratch[input.target]
}

errors contains "no scratch mounted at unmountTarget" if {
	rule_is({"scratch_unmount"})
	not scratch[input.unmountTarget]
}

errors contains "policy fragments are not supported" if rule_is({"load_fragment"})

errors contains "plan9 shares are not supported" if rule_is({"plan9_mount", "plan9_unmount"})
