"""RCU core: gp_seq arithmetic, segmented callback lists, grace-period machinery and kvfree_rcu."""
