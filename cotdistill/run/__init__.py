"""`cotdistill run`: plan the chain of stages, run what is not done yet, report."""

from cotdistill.run.config import PipelineConfig, StudentPlan
from cotdistill.run.control import (
    NOT_A_SELECTION,
    ControlDataConfig,
    draw_unfiltered,
    run_control_data,
)
from cotdistill.run.plan import Plan, plan, plan_lines
from cotdistill.run.report import chain_lines, pipeline_report
from cotdistill.run.runner import Stages, default_stages, move_aside, run_pipeline, stage_folders
from cotdistill.run.steps import STAMP, Step, content_hash, is_done, stamp_of

__all__ = [
    "ControlDataConfig", "NOT_A_SELECTION", "PipelineConfig", "Plan", "STAMP", "Stages", "Step",
    "StudentPlan", "chain_lines", "content_hash", "default_stages", "draw_unfiltered",
    "is_done", "move_aside", "pipeline_report", "plan", "plan_lines", "run_control_data",
    "run_pipeline", "stage_folders", "stamp_of",
]
