"""bench/route_reload.py: the rewrite keeps the route's text and changes its content."""

from bench.route_reload import loads_logged, rewritten, save


def test_rewrite_appends_one_comment_in_the_route_language():
    assert rewritten("x = 1\n", ".py", 2) == "x = 1\n# bench reload 2\n"
    assert rewritten("end", ".lua", 1) == "end\n-- bench reload 1\n"
    assert rewritten("}\n", ".java", 3) == "}\n// bench reload 3\n"
    assert rewritten("1;\n", ".pl", 1) != rewritten("1;\n", ".pl", 2)


def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    route = tmp_path / "main.lua"
    route.write_text("old")
    save(route, "new")
    assert route.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["main.lua"]


def test_loads_logged_counts_the_registry_lines():
    lines = ["2026-12-02 06:35:00,751 INFO watchfiles.main: 1 change detected",
             "2026-12-02 06:35:00,758 INFO babelsip.routes: route main: generation 2 loaded from main.lua (lua54)",
             "2026-12-02 06:35:01,513 INFO babelsip.routes: route main: generation 3 loaded from main.lua (lua54)",
             "2026-12-02 06:35:02,000 ERROR babelsip.routes: route main: main.lua:3: syntax error"]
    assert loads_logged(lines) == 2
