//! The Dockerfile front end: text → [`Dockerfile`] (directives, global ARGs, stages of
//! [`Step`]s) → a [`Plan`] for one target (the stages it needs, each base resolved, in an order
//! that builds dependencies first, with which may run in parallel) → per stage, a [`StageEval`]
//! that substitutes variables with the environment of the moment and turns each step into what
//! the executor does ([`Action`]) and what the image config becomes ([`ImageConfig`]).
//! Nothing here does I/O; every error names its line.

mod eval;
mod instruction;
mod lexer;
mod words;

pub use eval::{
    split_chown, Action, BuildArgs, CopyAction, HealthConfig, ImageConfig, RunAction, StageEval,
    StepOutcome,
};
pub use instruction::{parse_trigger, Command, CopySpec, Healthcheck, Instruction, Step};
pub use lexer::Directives;
pub use words::{expand, expand_word, split_raw, Lookup};

use crate::Error;
use std::collections::BTreeMap;

/// One `FROM` and the steps under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// Lower-cased `AS` name.
    pub name: Option<String>,
    /// The FROM's image, raw (global ARGs are substituted by [`Dockerfile::plan`]).
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs before the first FROM: usable in FROM lines, and imported by `ARG NAME` in a stage.
    pub global_args: Vec<Step>,
    pub stages: Vec<Stage>,
}

/// What a stage starts from once names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Stage(usize),
    Image(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStage {
    pub index: usize,
    pub base: Base,
    /// `FROM --platform=` after global ARG substitution (`$BUILDPLATFORM` as BuildKit's).
    pub platform: Option<String>,
    /// Stages this one needs built first (its base, `COPY --from`), without repeats.
    pub needs: Vec<usize>,
    /// `COPY --from=` values resolved: by step index, the stage or the image copied from.
    pub copy_from: BTreeMap<usize, Base>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Only the stages the target needs, dependencies before dependants.
    pub stages: Vec<PlannedStage>,
    pub target: usize,
    /// Global ARG values after `--build-arg` (unset ones absent).
    pub global_args: BTreeMap<String, String>,
    /// `--build-arg`s no ARG of the built stages declares (docker warns about them).
    pub unused_build_args: Vec<String>,
}

pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    let (directives, lines) = lexer::lex(text)?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for l in &lines {
        let step = instruction::parse_line(l, directives.escape)?;
        match (&step.instruction, stages.last_mut()) {
            (
                Instruction::From {
                    image,
                    name,
                    platform,
                },
                _,
            ) => {
                if let Some(name) = name {
                    if stages.iter().any(|s| s.name.as_ref() == Some(name)) {
                        return Err(Error::at(l.line, format!("duplicate stage name {name:?}")));
                    }
                }
                stages.push(Stage {
                    index: stages.len(),
                    name: name.clone(),
                    base: image.clone(),
                    platform: platform.clone(),
                    line: l.line,
                    steps: Vec::new(),
                });
            }
            (Instruction::Arg(_), None) => global_args.push(step),
            (_, None) => {
                return Err(Error::at(
                    l.line,
                    format!(
                        "{} before the first FROM: only ARG may come before it",
                        l.keyword
                    ),
                ))
            }
            (_, Some(stage)) => stage.steps.push(step),
        }
    }
    if stages.is_empty() {
        return Err(Error::new("the Dockerfile has no FROM instruction"));
    }
    Ok(Dockerfile {
        directives,
        global_args,
        stages,
    })
}

impl Dockerfile {
    pub fn stage_by_name(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
    }

    /// Global ARG values: defaults substituted in order, `--build-arg` overriding them.
    pub fn global_arg_values(
        &self,
        build_args: &BuildArgs,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut values = build_args.automatic().clone();
        for step in &self.global_args {
            if let Instruction::Arg(args) = &step.instruction {
                for (name, default) in args {
                    let value = match build_args.get(name) {
                        Some(v) => Some(v.to_string()),
                        None => match default {
                            Some(d) => Some(
                                expand_word(d, self.directives.escape, &values)
                                    .map_err(|e| e.or_line(step.line))?,
                            ),
                            None => None,
                        },
                    };
                    if let Some(v) = value {
                        values.insert(name.clone(), v);
                    }
                }
            }
        }
        Ok(values)
    }

    /// Resolves a FROM or `COPY --from` value seen from stage `before` (only earlier stages
    /// count, as in docker).
    fn resolve(&self, value: &str, before: usize, line: usize) -> Result<Base, Error> {
        if value.eq_ignore_ascii_case("scratch") {
            return Ok(Base::Scratch);
        }
        if let Some(i) = self.stage_by_name(value) {
            if i < before {
                return Ok(Base::Stage(i));
            }
            return Err(Error::at(
                line,
                format!("stage {value:?} is used before (or in) its own definition"),
            ));
        }
        if value.is_empty() {
            return Err(Error::at(line, "empty image or stage name"));
        }
        Ok(Base::Image(value.to_string()))
    }

    /// The stages `target` needs (the last stage when `None`), dependencies first.
    pub fn plan(&self, target: Option<&str>, build_args: &BuildArgs) -> Result<Plan, Error> {
        let escape = self.directives.escape;
        let global_args = self.global_arg_values(build_args)?;
        let target = match target {
            Some(t) => self.stage_by_name(t).ok_or_else(|| {
                let names: Vec<&str> = self
                    .stages
                    .iter()
                    .filter_map(|s| s.name.as_deref())
                    .collect();
                Error::new(format!(
                    "target stage {t:?} could not be found (stages: {})",
                    names.join(", ")
                ))
            })?,
            None => self.stages.len() - 1,
        };
        let mut planned: Vec<Option<PlannedStage>> = vec![None; self.stages.len()];
        // Stages are only ever resolved against earlier ones, so one backwards pass from the
        // target finds everything it needs.
        let mut wanted = vec![false; self.stages.len()];
        wanted[target] = true;
        for index in (0..=target).rev() {
            if !wanted[index] {
                continue;
            }
            let stage = &self.stages[index];
            let base_name = expand_word(&stage.base, escape, &global_args)
                .map_err(|e| e.or_line(stage.line))?;
            let base = self.resolve(&base_name, index, stage.line)?;
            let platform = match &stage.platform {
                Some(p) => {
                    Some(expand_word(p, escape, &global_args).map_err(|e| e.or_line(stage.line))?)
                }
                None => None,
            };
            let mut needs = Vec::new();
            if let Base::Stage(i) = base {
                needs.push(i);
            }
            // `--from` sees the stage's ARG defaults and the build args, as docker's does.
            let mut args = global_args.clone();
            let mut copy_from = BTreeMap::new();
            for (n, step) in stage.steps.iter().enumerate() {
                match &step.instruction {
                    Instruction::Arg(decls) => {
                        for (name, default) in decls {
                            let v = match build_args.get(name) {
                                Some(v) => Some(v.to_string()),
                                None => match default {
                                    Some(d) => Some(
                                        expand_word(d, escape, &args)
                                            .map_err(|e| e.or_line(step.line))?,
                                    ),
                                    None => global_args.get(name).cloned(),
                                },
                            };
                            if let Some(v) = v {
                                args.insert(name.clone(), v);
                            }
                        }
                    }
                    Instruction::Copy(CopySpec {
                        from: Some(from), ..
                    }) => {
                        let value =
                            expand_word(from, escape, &args).map_err(|e| e.or_line(step.line))?;
                        let source = match value.parse::<usize>() {
                            Ok(i) if i < index => Base::Stage(i),
                            Ok(_) => {
                                return Err(Error::at(
                                    step.line,
                                    format!(
                                    "COPY --from={value}: only earlier stages can be copied from"
                                ),
                                ))
                            }
                            Err(_) => self.resolve(&value, index, step.line)?,
                        };
                        if let Base::Stage(i) = source {
                            if !needs.contains(&i) {
                                needs.push(i);
                            }
                        }
                        copy_from.insert(n, source);
                    }
                    _ => {}
                }
            }
            for &i in &needs {
                wanted[i] = true;
            }
            planned[index] = Some(PlannedStage {
                index,
                base,
                platform,
                needs,
                copy_from,
            });
        }
        let mut declared: Vec<&str> = self
            .global_args
            .iter()
            .chain(
                planned
                    .iter()
                    .flatten()
                    .flat_map(|p| self.stages[p.index].steps.iter()),
            )
            .filter_map(|s| match &s.instruction {
                Instruction::Arg(decls) => Some(decls.iter().map(|(n, _)| n.as_str())),
                _ => None,
            })
            .flatten()
            .collect();
        declared.sort_unstable();
        let unused_build_args = build_args
            .names()
            .filter(|n| declared.binary_search(n).is_err() && !eval::is_predefined_arg(n))
            .map(str::to_string)
            .collect();
        Ok(Plan {
            stages: planned.into_iter().flatten().collect(),
            target,
            global_args,
            unused_build_args,
        })
    }
}

#[cfg(test)]
mod tests;
