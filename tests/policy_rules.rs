//! The policy engine on its own: patterns, each rule kind, precedence, explanations and
//! load errors with line numbers.

use hero_executor::catalog::HeroIntent;
use hero_executor::catalog::spec::{Idempotency, SideEffect};
use hero_executor::intent::Claims;
use hero_executor::policy::{Decision, Pattern, Policy, Subject, Verdict};

fn claims(list: &str) -> Claims {
    Claims::parse(list).unwrap()
}

fn intent(side: SideEffect, idem: Idempotency) -> HeroIntent {
    HeroIntent {
        side_effect_class: side,
        idempotency: idem,
        ..HeroIntent::UNDECLARED
    }
}

const READ: HeroIntent = HeroIntent {
    side_effect_class: SideEffect::Read,
    idempotency: Idempotency::Safe,
    ..HeroIntent::UNDECLARED
};

fn verdict(
    policy: &Policy,
    principal: &str,
    claims_list: &str,
    context: u64,
    capability: &str,
    i: &HeroIntent,
) -> Verdict {
    let c = claims(claims_list);
    policy
        .explain(
            Subject {
                principal,
                claims: &c,
                ceiling: &c,
                context,
            },
            capability,
            i,
        )
        .verdict
}

#[test]
fn patterns() {
    let p = |t: &str| Pattern::parse(t).unwrap();
    assert!(p("hero_agent.*").matches("hero_agent.chat"));
    assert!(
        p("hero_agent.*").matches("hero_agent.chat.send"),
        "a trailing * matches one or more segments"
    );
    assert!(!p("hero_agent.*").matches("hero_agent"));
    assert!(!p("hero_agent.*").matches("hero_agents.chat"));
    assert!(p("*.chat.send").matches("hero_agent.chat.send"));
    assert!(p("hero_agent.*.send").matches("hero_agent.chat.send"));
    assert!(
        !p("hero_agent.*.send").matches("hero_agent.a.b.send"),
        "a middle * matches exactly one segment"
    );
    assert!(p("*").matches("anything.at.all"));
    assert!(p("echo.echo").matches("echo.echo"));
    assert!(!p("echo.echo").matches("echo.echo.more"));
    for bad in ["me*", "hero_agent.ch*", "a..b", "", ".a", "a.", "*x.y"] {
        assert!(Pattern::parse(bad).is_err(), "{bad:?}");
    }
}

const POLICY: &str = r#"
[[grant]]
claim = "agent"
capabilities = ["hero_agent.*", "echo.*"]

[[grant]]
claim = "reader"
capabilities = ["echo.echo"]

[[guard]]
capabilities = ["*"]
side_effect = ["admin"]
effect = "require_approval"
approvers = ["ops"]

[[guard]]
capabilities = ["echo.*"]
idempotency = ["replay-unsafe"]
contexts = [9]
effect = "require_approval"
approvers = ["lead"]

[[guard]]
capabilities = ["hero_proc.*"]
effect = "deny"
reason = "process control is not exposed through the executor"

[[guard]]
capabilities = ["echo.*"]
principals = ["mallory"]
effect = "deny"

[[guard]]
capabilities = ["echo.secret"]
claims = ["intern"]
effect = "deny"
"#;

#[test]
fn each_rule_kind_and_their_precedence() {
    let policy = Policy::parse(POLICY, "test.toml").unwrap();
    let admin = intent(SideEffect::Admin, Idempotency::ReplaySafe);
    let unsafe_mutation = intent(SideEffect::MutateSelf, Idempotency::ReplayUnsafe);
    // Grants: a claim unlocks its patterns only.
    assert_eq!(verdict(&policy, "a", "agent", 0, "echo.echo", &READ), Verdict::Allow);
    assert_eq!(verdict(&policy, "r", "reader", 0, "echo.echo", &READ), Verdict::Allow);
    assert_eq!(
        verdict(&policy, "r", "reader", 0, "echo.sleep", &READ),
        Verdict::Deny,
        "no grant"
    );
    assert_eq!(
        verdict(&policy, "n", "", 0, "echo.echo", &READ),
        Verdict::Deny,
        "default deny"
    );
    // side_effect guard escalates, whatever the grants say; full trust is still subject to it.
    assert_eq!(
        verdict(&policy, "a", "agent", 0, "echo.reset", &admin),
        Verdict::RequireApproval
    );
    assert_eq!(
        verdict(&policy, "uid:0", "*", 0, "anything.reset", &admin),
        Verdict::RequireApproval
    );
    // idempotency + contexts conditions must all hold.
    assert_eq!(
        verdict(&policy, "a", "agent", 9, "echo.add", &unsafe_mutation),
        Verdict::RequireApproval
    );
    assert_eq!(
        verdict(&policy, "a", "agent", 0, "echo.add", &unsafe_mutation),
        Verdict::Allow
    );
    assert_eq!(verdict(&policy, "a", "agent", 9, "echo.add", &READ), Verdict::Allow);
    // Deny beats everything, including full trust and approval guards.
    assert_eq!(
        verdict(&policy, "uid:0", "*", 0, "hero_proc.service.start", &admin),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&policy, "mallory", "agent", 0, "echo.echo", &READ),
        Verdict::Deny,
        "principals"
    );
    assert_eq!(
        verdict(&policy, "a", "agent,intern", 0, "echo.secret", &READ),
        Verdict::Deny,
        "claims"
    );
    assert_eq!(verdict(&policy, "a", "agent", 0, "echo.secret", &READ), Verdict::Allow);
    // Full trust holds every grant.
    assert_eq!(
        verdict(&policy, "uid:0", "*", 0, "unlisted.thing", &READ),
        Verdict::Allow
    );
}

#[test]
fn decisions_are_explained() {
    let policy = Policy::parse(POLICY, "test.toml").unwrap();
    let c = claims("reader");
    let d = policy.explain(
        Subject {
            principal: "bob",
            claims: &c,
            ceiling: &c,
            context: 0,
        },
        "echo.sleep",
        &READ,
    );
    assert_eq!(
        d.reason,
        "no grant covers echo.sleep for principal bob with claims reader"
    );
    let c = claims("agent");
    let admin = intent(SideEffect::Admin, Idempotency::ReplaySafe);
    let d = policy.explain(
        Subject {
            principal: "a",
            claims: &c,
            ceiling: &c,
            context: 9,
        },
        "echo.reset",
        &admin,
    );
    assert_eq!(d.verdict, Verdict::RequireApproval);
    assert_eq!(d.approvers, ["ops"]);
    let kinds: Vec<(&str, usize, usize)> = d.matched.iter().map(|r| (r.kind, r.index, r.line)).collect();
    assert_eq!(
        kinds,
        [("guard", 1, 10), ("grant", 1, 2)],
        "every matching rule, with its line"
    );
    let d = policy.explain(
        Subject {
            principal: "a",
            claims: &c,
            ceiling: &c,
            context: 0,
        },
        "hero_proc.kill",
        &READ,
    );
    assert_eq!(d.reason, "process control is not exposed through the executor");
}

#[test]
fn load_errors_name_the_file_and_line() {
    let cases = [
        ("[[grant]]\nclaim = \"a\"\ncapabilities = [\"me*\"]\n", "p.toml:3:"),
        ("[[grant]]\nclaim = \"a\"\ncapabilities = [\"a..b\"]\n", "p.toml:3:"),
        (
            "[[grant]]\nclaim = \"a\"\ncolour = \"red\"\ncapabilities = [\"x.*\"]\n",
            "p.toml:",
        ),
        ("[[guard]]\ncapabilities = [\"*\"]\neffect = \"maybe\"\n", "p.toml:"),
        (
            "\n\n[[guard]]\ncapabilities = [\"*\"]\neffect = \"require_approval\"\n",
            "p.toml:3: a require_approval guard needs approvers",
        ),
        (
            "[[guard]]\ncapabilities = [\"*\"]\nside_effect = [\"explode\"]\neffect = \"deny\"\n",
            "p.toml:1: unknown side_effect",
        ),
        (
            "[[grant]]\nclaim = \"a\"\ncapabilities = []\n",
            "p.toml:1: capabilities is empty",
        ),
        ("[[grant]\n", "p.toml:1:"),
        ("[settings]\nx = 1\n", "p.toml:"),
    ];
    for (text, expected) in cases {
        let errors = Policy::parse(text, "p.toml").unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with(expected)), "{text:?}: {errors:?}");
    }
    // Every error is reported, not just the first.
    let errors = Policy::parse(
        "[[grant]]\nclaim = \"a\"\ncapabilities = [\"x*\", \"y..z\"]\n",
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    // An unknown key names its line.
    let errors = Policy::parse(
        "[[grant]]\nclaim = \"a\"\ncapabilities = [\"x.*\"]\ncolour = \"red\"\n",
        "p.toml",
    )
    .unwrap_err();
    assert!(
        errors[0].starts_with("p.toml:4:") && errors[0].contains("colour"),
        "{errors:?}"
    );
}

#[test]
fn the_embedded_default_loads() {
    let policy = Policy::load(None).unwrap();
    assert_eq!(policy.rule_count(), 3);
    assert_eq!(verdict(&policy, "a", "agent", 0, "echo.echo", &READ), Verdict::Allow);
    assert_eq!(verdict(&policy, "a", "ops", 0, "echo.echo", &READ), Verdict::Deny);
    assert_eq!(
        verdict(
            &policy,
            "a",
            "agent",
            0,
            "echo.counter.reset",
            &intent(SideEffect::Admin, Idempotency::ReplaySafe)
        ),
        Verdict::RequireApproval
    );
}

/// A guard's `claims` condition looks at the principal's own claims (its ceiling), so a
/// caller that narrows its claims away with `X-Hero-Claims` is still caught; grants look at
/// the narrowed claims.
#[test]
fn guards_on_claims_look_at_the_ceiling() {
    let text = r#"
[[grant]]
claim = "agent"
capabilities = ["echo.*"]

[[guard]]
capabilities = ["echo.*"]
claims = ["contractor"]
effect = "deny"
reason = "contractors may not use echo"
"#;
    let policy = Policy::parse(text, "t.toml").unwrap();
    let ceiling = claims("agent,contractor");
    let narrowed = claims("agent");
    let subject = |effective| Subject {
        principal: "con",
        claims: effective,
        ceiling: &ceiling,
        context: 0,
    };
    for effective in [&ceiling, &narrowed] {
        let e = policy.explain(subject(effective), "echo.echo", &READ);
        assert_eq!(e.verdict, Verdict::Deny, "effective claims {effective}");
        assert_eq!(e.reason, "contractors may not use echo");
    }
    let plain = claims("agent");
    let e = policy.explain(
        Subject {
            principal: "p",
            claims: &plain,
            ceiling: &plain,
            context: 0,
        },
        "echo.echo",
        &READ,
    );
    assert_eq!(e.verdict, Verdict::Allow);
}

/// At approval time an allow needs the approver to hold one of the approvers the policy in
/// force names; a deny stays a deny; only an allow carries a permit, for its capability.
#[test]
fn approvals_are_decided_again() {
    let policy = Policy::parse(POLICY, "test.toml").unwrap();
    let agent = claims("agent");
    let subject = Subject {
        principal: "a",
        claims: &agent,
        ceiling: &agent,
        context: 0,
    };
    let admin = intent(SideEffect::Admin, Idempotency::ReplaySafe);
    let held = policy.decide(subject, "echo.reset", &admin);
    assert!(matches!(held, Decision::RequireApproval(_)));
    match policy.decide_approved(subject, "echo.reset", &admin, &claims("ops")) {
        Decision::Allow(permit) => {
            assert_eq!(permit.capability(), "echo.reset");
            assert!(
                permit.explanation().reason.starts_with("approved: "),
                "{:?}",
                permit.explanation()
            );
        }
        other => panic!("an ops approval should allow, got {other:?}"),
    }
    let wrong = policy.decide_approved(subject, "echo.reset", &admin, &claims("agent"));
    assert!(matches!(wrong, Decision::RequireApproval(_)), "{wrong:?}");
    let denied = policy.decide_approved(subject, "hero_proc.kill", &READ, &claims("ops"));
    assert!(matches!(denied, Decision::Deny(_)), "{denied:?}");
}

/// Invariant: the one-line record of a decision names its rule once.
#[test]
fn the_record_names_the_rule_once() {
    let policy = Policy::parse(
        "[[grant]]\nclaim = \"agent\"\ncapabilities = [\"echo.*\"]\n\n[[guard]]\ncapabilities = [\"echo.reset\"]\neffect = \"deny\"\nreason = \"not here\"\n",
        "test.toml",
    )
    .unwrap();
    let c = claims("agent");
    let subject = Subject {
        principal: "a",
        claims: &c,
        ceiling: &c,
        context: 0,
    };
    let allowed = policy.explain(subject, "echo.echo", &READ).record();
    assert_eq!(allowed, "allowed by grant #1 (line 1)");
    let denied = policy.explain(subject, "echo.reset", &READ).record();
    assert_eq!(denied, "guard #1 (line 5): not here");
}
