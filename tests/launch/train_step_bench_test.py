#!/usr/bin/env python3
"""bench/train_step_bench on the CPU (configs/tiny_cpu.textproto, cut to
two layers): its record of the timed steps. They make no system allocation
(the caching allocator's blocks serve them) and each reads on the host what
the trainer's quiet step reads: with capacity drops the MoE layers' counts,
one read per MoE layer and micro-batch. Counted over the timed steps
themselves, not the trainer's last quiet step, which is an op-timed one
under --profile-steps.
usage: train_step_bench_test.py --bench BUILD/bench/train_step_bench"""
import json
import subprocess
import sys
import unittest

BENCH = None


def run(*extra):
    out = subprocess.run(
        [BENCH, "--config", "configs/tiny_cpu.textproto", "--set", "model.num_layers=2",
         "--set", "moe.capacity_factor=1.25", "--steps", "3", "--warmup", "2", *extra],
        check=True, capture_output=True, text=True).stdout
    records = [json.loads(l[len("BENCH_JSON "):]) for l in out.splitlines()
               if l.startswith("BENCH_JSON ")]
    assert len(records) == 1, out
    return out, records[0]


class TrainStepBenchTest(unittest.TestCase):
    def check(self, out, r):
        self.assertEqual(r["timed_steps_system_allocs"], 0)
        self.assertGreater(r["quiet_step_host_reads"], 0)
        self.assertEqual(r["timed_steps_host_reads"], r["steps"] * r["quiet_step_host_reads"])
        self.assertIn(f"timed steps: 0 system allocations, {r['timed_steps_host_reads']} host "
                      "reads", out)
        self.assertGreater(r["step_ms_median"], 0)

    def test_timed_steps(self):
        self.check(*run())

    def test_timed_steps_before_op_timed_ones(self):
        out, r = run("--profile-steps", "1")
        self.check(out, r)
        self.assertIn("where the time goes", out)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--bench":
        sys.exit(__doc__)
    BENCH = sys.argv.pop()
    sys.argv.pop()
    unittest.main()
