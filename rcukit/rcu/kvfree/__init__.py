"""kvfree_rcu(): one clock-free engine (:mod:`.core`), the simulated kernel's host (:mod:`.sim`)
and the allocator-core variants it draws block pages from (:mod:`.variants`).

The application domain's host is :mod:`rcukit.app.kvfree`, on the same core. This package
re-exports nothing, so that the application, which needs only the core, never imports the
simulated kernel's host and the page allocator behind it; the simulator's public names are in
:mod:`rcukit.sim`.
"""
