"""The endpoint router's decisions and the routes file, as pure functions (no Docker, no HTTP)."""

from __future__ import annotations

from localml_tasks.endpoint import describe_traffic, render_routes
from localml_tasks.router_server import choose, fix_for, mirror_target

RUNNING = {"blue": {"path": "/score", "port": 5001}, "green": {"path": "/predict", "port": 8080}}


def routes(traffic=None, mirror=None, running=RUNNING):
    return render_routes("ep", {"traffic": traffic, "mirror_traffic": mirror}, running)


def test_routes_point_score_at_each_deployments_own_scoring_route():
    rendered = routes({"blue": 90, "green": 10})
    assert rendered["deployments"]["blue"] == {"base": "http://127.0.0.1:5001",
                                               "scoring": "http://127.0.0.1:5001/score"}
    assert rendered["deployments"]["green"]["scoring"] == "http://127.0.0.1:8080/predict"
    assert rendered["traffic"] == {"blue": 90, "green": 10} and rendered["mirror_traffic"] == {}


def test_traffic_weights_split_the_unit_interval_in_name_order():
    table = routes({"blue": 90, "green": 10})
    assert choose(table, None, 0.0) == ("blue", None)
    assert choose(table, None, 0.899) == ("blue", None)
    assert choose(table, None, 0.9) == ("green", None)
    assert choose(table, None, 0.99999) == ("green", None)


def test_the_header_wins_over_traffic_and_an_unknown_name_says_what_runs():
    table = routes({"blue": 100, "green": 0})
    assert choose(table, "green", 0.0) == ("green", None)
    deployment, why = choose(table, "purple", 0.0)
    assert deployment is None and "no deployment 'purple'" in why and "(running: blue, green)" in why


def test_a_deployment_not_running_gives_its_share_to_the_others():
    table = routes({"blue": 90, "green": 10}, running={"blue": RUNNING["blue"]})
    assert {choose(table, None, draw / 10)[0] for draw in range(10)} == {"blue"}
    assert describe_traffic(table) == "blue 90 %, green 10 %; green is not running here: its share goes to blue"


def test_no_traffic_and_one_deployment_routes_everything_to_it_but_two_need_a_name():
    one = routes(running={"blue": RUNNING["blue"]})
    assert choose(one, None, 0.5) == ("blue", None)
    assert describe_traffic(one) == "all to blue (no traffic set, one deployment)"
    two = routes()
    deployment, why = choose(two, None, 0.5)
    assert deployment is None and "azureml-model-deployment header" in why


def test_traffic_only_to_deployments_that_do_not_run_is_refused():
    table = routes({"red": 100})
    deployment, why = choose(table, None, 0.5)
    assert deployment is None and "traffic: red 100 %" in why and "running: blue, green" in why


def test_mirror_copies_its_share_only_to_a_running_deployment():
    table = routes({"blue": 100}, {"green": 10})
    assert mirror_target(table, 0.05) == "green"
    assert mirror_target(table, 0.10) is None
    assert mirror_target(routes({"blue": 100}, {"green": 10}, running={"blue": RUNNING["blue"]}), 0.0) is None
    assert describe_traffic(table) == "blue 100 % (mirror: green 10 %)"


def test_the_routers_own_errors_say_what_to_run_never_doit_logs():
    starts = {"blue": "doit debug spec=/p/blue-deployment.yml", "green": "doit debug spec=/p/green-deployment.yml"}
    table = render_routes("ep", {"traffic": {"blue": 90, "green": 10}}, {"blue": RUNNING["blue"]}, starts=starts)
    assert fix_for(table, None, silent="blue").endswith("start it again: doit debug spec=/p/blue-deployment.yml")
    assert fix_for(table, "green") == "start it: doit debug spec=/p/green-deployment.yml"
    assert fix_for(table, "purple").endswith("start purple: doit debug spec=<its deployment YAML> deployment=purple")
    nothing_runs = render_routes("ep", {"traffic": {"blue": 100}}, {}, starts=starts)
    assert fix_for(nothing_runs, None).startswith("start blue: doit debug spec=/p/blue-deployment.yml")
    for fix in (fix_for(table, None, silent="blue"), fix_for(table, "purple"), fix_for(nothing_runs, None)):
        assert "doit logs" not in fix and ("doit endpoints" in fix or "doit debug spec=" in fix)
