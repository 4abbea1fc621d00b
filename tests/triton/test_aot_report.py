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


def test_hot_loop_counts_conversions_loads_and_loop_barriers():
    sass = _sass([
        (0x00, "LDG.E.128 R8, desc[UR4][R2.64]"),        # outside the loop
        (0x10, "LDG.E.64 R4, desc[UR4][R2.64+0x40]"),     # loop: a 64-bit load = half a 128-bit one
        (0x20, "HADD2.F32 R6, -RZ, R4.H0_H0"),            # fp16 -> fp32
        (0x30, "IMAD.U32 R7, R5, 0x10000, RZ"),           # bf16 low half (<< 16)
        (0x40, "LOP3.LUT R9, R5, 0xffff0000, RZ, 0xc0, !PT"),  # bf16 high half
        (0x50, "FFMA R10, R6, R11, R10"),
        (0x60, "FFMA R12, R7, R11, R12"),
        (0x70, "FFMA R13, R9, R11, R13"),
        (0x80, "FFMA R14, R9, R11, R14"),
        (0x90, "BAR.SYNC.DEFER_BLOCKING 0x0"),
        (0xa0, "@P0 BRA 0x10"),
        (0xb0, "STL [R1], R10"),
        (0xc0, "EXIT"),
    ])
    profile = aot_report.sass_profile(sass)
    assert profile["hot"] == {"instr": 10, "fma": 4, "cvt": 3, "ldg128": 0.5, "lsu_cycles": 2}
    assert aot_report.hot_loop_ratios(profile) == {"fma_share": 0.4, "cvt_per_fma": 0.75, "ldg128_per_fma": 0.125}
    instrs = aot_report.sass_instructions(sass)
    assert aot_report.loop_barriers(instrs) == 1
    assert aot_report.spill_bytes(instrs) == (4, 0)


def test_res_usage_of_the_cubin_triton_built():
    text = " Function _pool_bwd_kernel:\n  REG:166 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:584 TEXTURE:0\n"
    assert aot_report.parse_res_usage(text) == {"registers": 166, "stack": 0, "shared": 0, "local": 0}


def test_cuda_names_keep_their_template_arguments():
    pretty = ("void deltaconv::(anonymous namespace)::tile_conv_kernel<c10::Half, deltaconv::GateStore<float> >"
              "(deltaconv::Args<c10::Half>)")
    assert aot_report.short_cuda_name(pretty) == "tile_conv_kernel<c10::Half, deltaconv::GateStore<float> >"
    assert aot_report.short_cuda_name("void ns::plain_kernel(float*, int)") == "plain_kernel"


def test_estimate_of_a_launch_from_its_hot_loop():
    # 264 programs x 4 warps; hot loop 100 instructions with 80 FMAs and 10 LSU cycles, 20 more instructions once.
    rec = {"registers": 128, "shared_bytes": 0,
           "profile": {"total": {"instr": 120, "lsu_cycles": 12}, "hot_is_loop": True, "others": [],
                       "hot": {"instr": 100, "fma": 80, "lsu_cycles": 10}}}
    values = {"BLOCK_H": 8, "BLOCK_W": 16, "BLOCK_C": 32, "K": 13}
    est = aot_report.estimate("_conv_input_bwd_kernel", {"grid": (264, 1), "num_warps": 4, "values": values}, rec)
    passes = 264 * 8 * 16 * 32 * 2 * 169 / (32 * 80)
    instr = passes * 100 + 264 * 4 * 20
    cycles = passes * 10 + 264 * 4 * 2
    assert est["warp_instr"] == int(instr)
    assert est["issue_us"] == round(instr / (132 * 4 * aot_report.H100["clock_hz"]) * 1e6, 2)
    assert est["l1_us"] == round(cycles / (132 * aot_report.H100["clock_hz"]) * 1e6, 2)
    assert est["ctas_per_sm"] == 4 and est["waves"] == 0.5
