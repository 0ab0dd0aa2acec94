"""Simulated memory management: GFP flags, the page allocator, kswapd, slab and vmalloc."""
