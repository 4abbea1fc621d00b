"""python/aot_report.py: the SASS reading behind its fma_share column, the ptxas parsing, and its CLI errors. (The
compiles themselves run in CI as their own step: `python python/aot_report.py --dtypes fp16`.)"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

import aot_report  # noqa: E402


def _sass(lines):
    return "\n".join(f"        /*{addr:04x}*/                   {text} ;" for addr, text in lines)


def test_fma_share_takes_the_innermost_loop_with_most_fmas():
    sass = _sass([
        (0x00, "MOV R1, c[0x0][0x28]"),
        (0x10, "FFMA R2, R3, R4, R2"),       # outer loop body start
        (0x20, "LDG.E.128 R4, [R6.64]"),     # inner loop 1: 2 FFMA of 4
        (0x30, "FFMA R2, R3, R4, R2"),
        (0x40, "HFMA2.MMA R5, -RZ, RZ, 0, 0"),  # a move, not an FMA
        (0x50, "@P0 BRA 0x20"),
        (0x60, "HFMA2 R7, R8, R9, R7"),      # inner loop 2: 1 FMA of 2
        (0x70, "@P1 BRA 0x60"),
        (0x80, "@P2 BRA 0x10"),
        (0x90, "EXIT"),
    ])
    assert aot_report.innermost_loop_fma_share(sass) == round(1 / 4, 3)


def test_fma_share_of_unrolled_code_and_of_code_without_fmas():
    unrolled = _sass([(0x00, "FFMA R1, R2, R3, R1"), (0x10, "LDG.E R2, [R4.64]"), (0x20, "EXIT")])
    assert aot_report.innermost_loop_fma_share(unrolled) == 0.333
    assert aot_report.innermost_loop_fma_share(_sass([(0x00, "MOV R1, R2"), (0x10, "EXIT")])) is None


def test_parse_ptxas():
    text = ("ptxas info    : Used 168 registers, used 0 barriers\n"
            "    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n")
    assert aot_report.parse_ptxas(text) == {"registers": 168, "spill_st": 12, "spill_ld": 16, "stack": 8}


def test_cli_errors_are_one_line_exit_2():
    for args in (["--arch", "90,x"], ["--dtypes", "fp8"], ["--shapes", "sdxl"], ["--jobs", "0"]):
        res = subprocess.run([sys.executable, str(ROOT / "python" / "aot_report.py"), *args], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.startswith("error: ") and "Traceback" not in res.stderr, res.stderr
