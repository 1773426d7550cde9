"""Items split into near-equal shares by size: ranks of a run, and jobs of a dataset."""

import heapq


def assign_by_size(sizes: list[int], num_shares: int) -> list[list[int]]:
    """Split item indices into `num_shares` lists of near-equal total size.

    Largest first, each to the currently lightest list (LPT), so shares finish together; ties
    go to the lowest share. Deterministic: every process computes the same split.
    """
    shares: list[list[int]] = [[] for _ in range(num_shares)]
    heap = [(0, 0, share) for share in range(num_shares)]  # (load, items, share)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, count, share = heapq.heappop(heap)
        shares[share].append(index)
        heapq.heappush(heap, (load + sizes[index], count + 1, share))
    return shares
