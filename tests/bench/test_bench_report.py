"""bench/report.py: the ratios and target checks of the summary (no sipp, no timing)."""

from bench.report import LatencyRun, RssRun, Step, Target, best_steps, compare, targets
from bench.sipp_stats import Latency


def step(system, rate, cpu, passed=True, failed=0):
    return Step(system, rate, rate * 4, rate * 4 - failed, failed, 0, cpu, None, 4.0, passed)


def test_rate_ratio_of_maxima_and_cpu_ratio_at_the_highest_common_passing_rate():
    steps = [step("kamailio", 500, 100), step("kamailio", 1000, 110), step("kamailio", 2000, 120),
             step("babelsip-lua", 500, 800), step("babelsip-lua", 1000, 880),
             step("babelsip-lua", 2000, 900, passed=False)]
    best = best_steps(steps, ["kamailio", "babelsip-lua"])
    assert best["babelsip-lua"].rate == 1000
    assert compare(steps, best, "babelsip-lua", "kamailio") == {
        "rate": 0.5, "cpu_per_call": 8.0, "cpu_compared_at": 1000}
    assert compare(steps, best, "babelsip-lua", "babelsip-perl") is None   # never ran


def test_targets_use_the_issue_limits():
    ratios = {"babelsip-lua": {"rate": 0.25, "cpu_per_call": 1.5, "cpu_compared_at": 1000}}
    vs_lua = {"babelsip": {"rate": 1.0, "cpu_per_call": 0.9, "cpu_compared_at": 1000},
              "babelsip-perl": {"rate": 0.5, "cpu_per_call": 3.0, "cpu_compared_at": 500}}
    run = LatencyRun("babelsip-lua", step("babelsip-lua", 500, 900, failed=2),
                     Latency(2000, 1.0, 9.0, 20.0), Latency(2000, 0.2, 1.0, 3.0), reloads=3, reloads_logged=3)
    verdicts = {t.what: t.met for t in targets(ratios, vs_lua, [run])}
    assert verdicts == {
        "babelsip-lua rate / kamailio rate": False,                 # 0.25 < 0.5
        "babelsip-lua CPU per call / kamailio's (at 1000/s)": True,  # 1.5 <= 2
        "babelsip rate / babelsip-lua rate": True,                   # relay at least as fast
        "babelsip-perl rate / babelsip-lua rate": False,             # 0.5 < 0.7
        "babelsip-lua added p99 ms at 500/s": False,                 # 9 - 1 = 8 > 5
        "babelsip-lua failed calls with 3 reloads": False,           # 2 > 0
    }
    assert Target("x", None, 1.0, True).met is None


def test_rss_growth_over_the_last_half_of_the_calls():
    samples = [(float(t), 40.0 + (t if t <= 10 else 10)) for t in range(0, 21)]   # flat from t=10
    run = RssRun("babelsip", Step("babelsip", 100, 2000, 2000, 0, 0, 1.0, None, 20.0, True), samples)
    assert run.growth_last_half_mb() == 0.0
    assert run.at(10.4) == 50.0
