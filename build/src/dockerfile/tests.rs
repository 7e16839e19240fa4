use super::*;

fn args(pairs: &[(&str, &str)]) -> BuildArgs {
    let mut b = BuildArgs::new();
    for (k, v) in pairs {
        b.add(&format!("{k}={v}"), |_| None).unwrap();
    }
    b
}

/// Runs every step of `stage` on an empty base; returns the outcomes and the final state.
fn run_stage(df: &Dockerfile, stage: usize, build: &BuildArgs) -> (Vec<StepOutcome>, StageEval) {
    let globals = df.global_arg_values(build).unwrap();
    let (mut eval, _) = StageEval::new(df, ImageConfig::default(), &globals, build);
    let outcomes = df.stages[stage]
        .steps
        .iter()
        .map(|s| eval.step(s).unwrap())
        .collect();
    (outcomes, eval)
}

const MULTI: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
ARG VERSION
FROM ${BASE}:latest AS build
ARG VERSION=1.0
WORKDIR /src
COPY hello.c .
RUN cc -o hello hello.c \
    && strip hello

FROM scratch AS unused
COPY --from=build /src/hello /

FROM $BASE
COPY --from=build /src/hello /usr/bin/hello
USER 1000:1000
CMD ["hello"]
"#;

#[test]
fn stages_and_the_default_target() {
    let df = parse(MULTI).unwrap();
    assert_eq!(df.stages.len(), 3);
    assert_eq!(df.directives.notes.len(), 1);
    let plan = df.plan(None, &BuildArgs::new()).unwrap();
    let order: Vec<usize> = plan.stages.iter().map(|s| s.index).collect();
    assert_eq!(order, [0, 2], "the unused stage is not built");
    assert_eq!(plan.stages[0].base, Base::Image("busybox:latest".into()));
    assert_eq!(plan.stages[1].base, Base::Image("busybox".into()));
    assert_eq!(plan.stages[1].needs, [0]);
    assert_eq!(plan.stages[1].copy_from.get(&0), Some(&Base::Stage(0)));
}

#[test]
fn target_and_build_args_pick_stages_and_bases() {
    let df = parse(MULTI).unwrap();
    let plan = df
        .plan(Some("UNUSED"), &args(&[("BASE", "alpine")]))
        .unwrap();
    let order: Vec<usize> = plan.stages.iter().map(|s| s.index).collect();
    assert_eq!(order, [0, 1]);
    assert_eq!(plan.stages[0].base, Base::Image("alpine:latest".into()));
    assert_eq!(plan.stages[1].base, Base::Scratch);
    let err = df.plan(Some("nope"), &BuildArgs::new()).unwrap_err();
    assert!(err.message.contains("build, unused"), "{err}");
}

#[test]
fn unused_build_args_are_reported() {
    let df = parse(MULTI).unwrap();
    let plan = df
        .plan(
            None,
            &args(&[("VERSION", "2"), ("OTHER", "x"), ("HTTP_PROXY", "p")]),
        )
        .unwrap();
    assert_eq!(plan.unused_build_args, ["OTHER"]);
}

#[test]
fn arg_scoping() {
    let text = "ARG G=global\nARG ONLY=outside\nFROM a\nRUN echo $G $ONLY\nARG G\nARG L=${G}-local\nRUN echo $G $L\n";
    let df = parse(text).unwrap();
    let (out, _) = run_stage(&df, 0, &BuildArgs::new());
    // Before `ARG G` in the stage, globals are not visible (RUN sees no such env either).
    let Action::Run(first) = &out[0].action else {
        panic!()
    };
    assert!(!first.env.iter().any(|e| e.starts_with("G=")));
    assert!(out[0].cache_args.is_empty());
    let Action::Run(second) = &out[3].action else {
        panic!()
    };
    assert!(second.env.contains(&"G=global".to_string()));
    assert!(second.env.contains(&"L=global-local".to_string()));
    assert_eq!(
        out[3].created_by,
        "RUN |2 G=global L=global-local /bin/sh -c echo $G $L"
    );
    assert_eq!(out[3].cache_args.len(), 2);

    let (out, _) = run_stage(&df, 0, &args(&[("G", "cli"), ("L", "cli-l")]));
    let Action::Run(second) = &out[3].action else {
        panic!()
    };
    assert!(second.env.contains(&"G=cli".to_string()));
    assert!(second.env.contains(&"L=cli-l".to_string()));
}

#[test]
fn env_wins_over_arg_and_sees_the_line_before() {
    let text = "FROM a\nARG X=arg\nENV X=env\nENV A=1\nENV A=2 B=$A\nWORKDIR /$X\n";
    let df = parse(text).unwrap();
    let (out, eval) = run_stage(&df, 0, &BuildArgs::new());
    assert_eq!(eval.config.env_value("B"), Some("1"));
    assert_eq!(eval.config.env_value("A"), Some("2"));
    assert_eq!(eval.config.working_dir, "/env");
    assert_eq!(out[4].action, Action::Workdir("/env".into()));
    assert!(out[4].cache_args.is_empty(), "ENV shadows the ARG");
    assert_eq!(out[3].created_by, "ENV A=2 B=1");
}

#[test]
fn legacy_env_and_label_forms() {
    let df =
        parse("FROM a\nENV PATH /usr/local/bin:/bin with space\nLABEL a=\"b c\" 'd'=e\n").unwrap();
    let (_, eval) = run_stage(&df, 0, &BuildArgs::new());
    assert_eq!(
        eval.config.env_value("PATH"),
        Some("/usr/local/bin:/bin with space")
    );
    assert_eq!(eval.config.labels.get("a").map(String::as_str), Some("b c"));
    assert_eq!(eval.config.labels.get("d").map(String::as_str), Some("e"));
    assert!(parse("FROM a\nENV A=1 B\n").is_err());
    assert!(parse("FROM a\nENV A\n").is_err());
}

#[test]
fn workdir_user_and_run() {
    let df = parse(
        "FROM a\nWORKDIR /app\nWORKDIR sub/../data\nUSER nobody\nRUN [\"id\", \"-u\"]\nRUN pwd\n",
    )
    .unwrap();
    let (out, eval) = run_stage(&df, 0, &BuildArgs::new());
    assert_eq!(eval.config.working_dir, "/app/data");
    let Action::Run(exec) = &out[3].action else {
        panic!()
    };
    assert_eq!(exec.argv, ["id", "-u"]);
    assert_eq!(exec.user, "nobody");
    assert_eq!(exec.workdir, "/app/data");
    let Action::Run(shell) = &out[4].action else {
        panic!()
    };
    assert_eq!(shell.argv, ["/bin/sh", "-c", "pwd"]);
}

#[test]
fn shell_cmd_entrypoint() {
    let df = parse("FROM a\nSHELL [\"/bin/ash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN a | b\nCMD echo hi\nENTRYPOINT [\"/e\"]\n").unwrap();
    let (out, eval) = run_stage(&df, 0, &BuildArgs::new());
    let Action::Run(run) = &out[1].action else {
        panic!()
    };
    assert_eq!(run.argv, ["/bin/ash", "-eo", "pipefail", "-c", "a | b"]);
    assert_eq!(
        eval.config.cmd.as_deref(),
        Some(
            &[
                "/bin/ash".to_string(),
                "-eo".into(),
                "pipefail".into(),
                "-c".into(),
                "echo hi".into()
            ][..]
        )
    );
    assert_eq!(
        eval.config.entrypoint.as_deref(),
        Some(&["/e".to_string()][..])
    );
    assert!(parse("FROM a\nSHELL /bin/sh -c\n").is_err());
}

#[test]
fn an_inherited_cmd_is_reset_by_entrypoint() {
    let df = parse("FROM a\nENTRYPOINT [\"/e\"]\n").unwrap();
    let base = ImageConfig {
        cmd: Some(vec!["sh".into()]),
        ..ImageConfig::default()
    };
    let (mut eval, _) = StageEval::new(&df, base, &Default::default(), &BuildArgs::new());
    eval.step(&df.stages[0].steps[0]).unwrap();
    assert_eq!(eval.config.cmd, None);
}

#[test]
fn copy_forms_and_flags() {
    let text = "FROM a\nWORKDIR /w\nARG OWNER=1:2\nCOPY --chown=$OWNER --chmod=640 a b dir/\nCOPY [\"x y\", \".\"]\nADD archive.tar /opt\n";
    let df = parse(text).unwrap();
    let (out, _) = run_stage(&df, 0, &BuildArgs::new());
    let Action::Copy(c) = &out[2].action else {
        panic!()
    };
    assert_eq!(c.sources, ["a", "b"]);
    assert_eq!(c.dest, "/w/dir/");
    assert_eq!(c.chown.as_deref(), Some("1:2"));
    assert_eq!(c.chmod, Some(0o640));
    assert_eq!(
        out[2].cache_args,
        [("OWNER".to_string(), "1:2".to_string())]
    );
    let Action::Copy(c) = &out[3].action else {
        panic!()
    };
    assert_eq!(c.sources, ["x y"]);
    assert_eq!(c.dest, "/w/");
    let Action::Copy(c) = &out[4].action else {
        panic!()
    };
    assert!(c.add);
    assert_eq!(c.dest, "/opt");
    assert_eq!(split_chown("a:b"), ("a".to_string(), Some("b".to_string())));
}

#[test]
fn copy_refusals_name_the_line() {
    for (text, line, needle) in [
        ("FROM a\nCOPY a b c\n", 2, "directory destination"),
        ("FROM a\n\nCOPY --chmod=999 a /b\n", 3, "octal"),
        ("FROM a\nADD https://example.com/x /x\n", 2, "URL"),
        ("FROM a\nCOPY --frm=x a b\n", 2, "unknown flag"),
        ("FROM a\nCOPY a\n", 2, "destination"),
        (
            "FROM a\nRUN --mount=type=cache,target=/x true\n",
            2,
            "not supported",
        ),
        ("FROM a\nRUN cat <<EOF\n", 2, "heredoc"),
        ("FROM a\nCOPY <<-\"EOF\" /x\n", 2, "heredoc"),
    ] {
        let err = parse(text).and_then(|df| {
            let globals = BTreeMap::new();
            let (mut eval, _) =
                StageEval::new(&df, ImageConfig::default(), &globals, &BuildArgs::new());
            for s in &df.stages[0].steps {
                eval.step(s)?;
            }
            Ok(())
        });
        let err = err.unwrap_err();
        assert_eq!(err.line, Some(line), "{text}: {err}");
        assert!(err.to_string().contains(needle), "{text}: {err}");
        assert!(err
            .to_string()
            .starts_with(&format!("Dockerfile line {line}: ")));
    }
    // Shifts inside words are not heredocs.
    assert!(parse("FROM a\nRUN echo $((1<<2))\n").is_ok());
}

#[test]
fn metadata_instructions() {
    let text = "FROM a\nEXPOSE 80 53/udp 8000-8010\nVOLUME [\"/data\"]\nVOLUME /a /b\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f localhost\nONBUILD RUN echo child\nMAINTAINER me\n";
    let df = parse(text).unwrap();
    let (out, eval) = run_stage(&df, 0, &BuildArgs::new());
    assert!(out.iter().all(|o| o.action == Action::Config));
    let c = &eval.config;
    let ports: Vec<&str> = c.exposed_ports.keys().map(String::as_str).collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000-8010/tcp"]);
    assert_eq!(c.volumes.len(), 3);
    assert_eq!(c.stop_signal, "SIGTERM");
    let h = c.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
    assert_eq!(h.interval, Some(90_000_000_000));
    assert_eq!(h.retries, Some(3));
    assert_eq!(c.on_build, ["RUN echo child"]);
    assert_eq!(eval.author.as_deref(), Some("me"));
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["OnBuild"][0], "RUN echo child");
    assert_eq!(json["ExposedPorts"]["80/tcp"], serde_json::json!({}));
    for bad in [
        "EXPOSE 0",
        "EXPOSE 80/xyz",
        "STOPSIGNAL 9x!",
        "HEALTHCHECK --interval=5x CMD a",
        "HEALTHCHECK NONE x",
        "HEALTHCHECK",
    ] {
        let df = parse(&format!("FROM a\n{bad}\n"));
        let failed = df.and_then(|df| {
            let (mut eval, _) = StageEval::new(
                &df,
                ImageConfig::default(),
                &BTreeMap::new(),
                &BuildArgs::new(),
            );
            eval.step(&df.stages[0].steps[0]).map(|_| ())
        });
        assert!(failed.is_err(), "{bad}");
    }
}

#[test]
fn onbuild_triggers_come_from_the_base_and_are_not_inherited() {
    let df = parse("FROM a\nRUN true\n").unwrap();
    let base = ImageConfig {
        on_build: vec!["COPY . /app".into(), "RUN make".into()],
        ..ImageConfig::default()
    };
    let (eval, triggers) = StageEval::new(&df, base, &BTreeMap::new(), &BuildArgs::new());
    assert!(eval.config.on_build.is_empty());
    let steps: Vec<Step> = triggers
        .iter()
        .map(|t| parse_trigger(t, 1, '\\').unwrap())
        .collect();
    assert!(matches!(steps[0].instruction, Instruction::Copy(_)));
    assert!(parse_trigger("FROM x", 1, '\\').is_err());
    assert!(parse("FROM a\nONBUILD ONBUILD RUN x\n").is_err());
    assert!(parse("FROM a\nONBUILD FROM x\n").is_err());
}

#[test]
fn stage_references() {
    assert!(
        parse("FROM a AS x\nFROM b AS X\n").is_err(),
        "names are case-insensitive"
    );
    assert!(parse("FROM a AS 1x\n").is_err());
    let df = parse("FROM a AS one\nCOPY --from=two /a /b\nFROM b AS two\n").unwrap();
    assert!(
        df.plan(Some("one"), &BuildArgs::new()).is_err(),
        "a later stage is refused, not pulled"
    );
    let df = parse(
        "FROM a AS one\nFROM one AS two\nCOPY --from=0 /a /b\nCOPY --from=busybox /bin/sh /sh\n",
    )
    .unwrap();
    let plan = df.plan(None, &BuildArgs::new()).unwrap();
    assert_eq!(plan.stages[1].base, Base::Stage(0));
    assert_eq!(
        plan.stages[1].copy_from.get(&1),
        Some(&Base::Image("busybox".into()))
    );
    let df = parse("FROM a\nCOPY --from=1 /a /b\nFROM b\n").unwrap();
    assert!(
        df.plan(None, &BuildArgs::new()).is_ok(),
        "stage 0 is not needed"
    );
    assert!(df.plan(Some("x"), &BuildArgs::new()).is_err());
    let df = parse("FROM a AS s\nCOPY --from=s /a /b\n").unwrap();
    assert!(
        df.plan(None, &BuildArgs::new()).is_err(),
        "a stage cannot copy from itself"
    );
}

#[test]
fn structure_errors() {
    assert!(parse("").unwrap_err().message.contains("no FROM"));
    let err = parse("RUN x\nFROM a\n").unwrap_err();
    assert_eq!(err.line, Some(1));
    let err = parse("FROM a\nFROB x\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile line 2: unknown instruction: FROB"
    );
    assert!(parse("FROM\n").is_err());
    assert!(parse("FROM a b c d\n").is_err());
    let err =
        parse("ARG A=${B\nFROM a\n").and_then(|df| df.plan(None, &BuildArgs::new()).map(|_| ()));
    assert_eq!(err.unwrap_err().line, Some(1));
}

#[test]
fn platform_args_are_global() {
    let text = "FROM --platform=$BUILDPLATFORM img-$TARGETARCH AS b\nRUN echo $TARGETARCH\nARG TARGETARCH\nRUN echo $TARGETARCH\n";
    let df = parse(text).unwrap();
    let mut build = BuildArgs::new();
    build.set_platform("linux", "arm64", Some("v8"));
    let plan = df.plan(None, &build).unwrap();
    assert_eq!(plan.stages[0].base, Base::Image("img-arm64".into()));
    assert_eq!(
        plan.global_args.get("BUILDPLATFORM").map(String::as_str),
        Some("linux/arm64/v8")
    );
    let (out, _) = run_stage(&df, 0, &build);
    let Action::Run(before) = &out[0].action else {
        panic!()
    };
    assert!(
        !before.env.iter().any(|e| e.starts_with("TARGETARCH=")),
        "not in a stage until declared"
    );
    let Action::Run(after) = &out[2].action else {
        panic!()
    };
    assert!(after.env.contains(&"TARGETARCH=arm64".to_string()));
}

#[test]
fn build_args_from_the_environment() {
    let mut b = BuildArgs::new();
    b.add("A", |n| (n == "A").then(|| "env".to_string()))
        .unwrap();
    b.add("B", |_| None).unwrap();
    assert_eq!(b.get("A"), Some("env"));
    assert_eq!(b.get("B"), None);
    assert!(b.add("=x", |_| None).is_err());
}

/// The fuzz-friendly entry: parse, plan and evaluate every stage, never panicking.
fn exercise(text: &str) {
    let Ok(df) = parse(text) else { return };
    let build = BuildArgs::new();
    let Ok(plan) = df.plan(None, &build) else {
        return;
    };
    for p in &plan.stages {
        let (mut eval, _) = StageEval::new(&df, ImageConfig::default(), &plan.global_args, &build);
        for s in &df.stages[p.index].steps {
            let _ = eval.step(s);
        }
    }
}

#[test]
fn mutated_inputs_never_panic() {
    // A small xorshift keeps the corpus reproducible without a fuzzing dependency.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: Vec<char> = "\\`$'\"{}[]:-+?=# \n\t/.<>AaRUNFROMCOPY,@*!"
        .chars()
        .collect();
    let seeds = [
        MULTI,
        "FROM a\nENV A=${B:-x} C=\"$A\"\nCOPY [\"a\", \"b\"]\nHEALTHCHECK CMD x\nONBUILD ADD a b\n",
    ];
    for round in 0..4000 {
        let mut text: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..(1 + next() % 8) {
            let at = (next() as usize) % (text.len() + 1);
            match next() % 3 {
                0 if at < text.len() => {
                    text.remove(at);
                }
                1 if at < text.len() => text[at] = alphabet[(next() as usize) % alphabet.len()],
                _ => text.insert(at, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        exercise(&text.into_iter().collect::<String>());
    }
}

#[test]
fn a_cross_platform_target_keeps_the_build_platform() {
    let text =
        "FROM --platform=$BUILDPLATFORM tool AS t\nFROM img-$TARGETARCH\nCOPY --from=t /x /x\n";
    let df = parse(text).unwrap();
    let mut build = BuildArgs::new();
    build.set_platform("linux", "arm64", Some("v8"));
    build.set_build_platform("linux", "amd64", None);
    let plan = df.plan(None, &build).unwrap();
    assert_eq!(plan.stages[0].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(plan.stages[1].platform, None);
    assert_eq!(plan.stages[1].base, Base::Image("img-arm64".into()));
    assert_eq!(
        plan.global_args.get("TARGETPLATFORM").map(String::as_str),
        Some("linux/arm64/v8")
    );
}
