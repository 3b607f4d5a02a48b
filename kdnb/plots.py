"""Figures and tables for the chapters: learning curves, bars with error bars, confusion
matrices, heatmaps, and markdown tables of mean ± std."""
import statistics

import matplotlib.pyplot as plt
import torch


def mean_std(values):
    values = [float(v) for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values, scale=100, digits=1):
    """'mean ± std' of ``values`` (accuracies in [0, 1] shown as percent by default)."""
    m, s = mean_std(values)
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def table(rows, header):
    """A markdown table (shown as a table in JupyterLab and on the site)."""
    from IPython.display import Markdown
    cell = lambda c: str(c).replace("|", "\\|")  # a bare pipe would end the cell
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return Markdown("\n".join(lines))


def curves(histories, key="val_acc", ax=None, title=None, ylabel="validation accuracy"):
    """One line per named run; ``histories`` maps a name to a list of histories (seeds),
    drawn as the mean with a band of ± one std."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name, hs in histories.items():
        y = torch.tensor([h[key] for h in hs], dtype=torch.float64)
        m, s = y.mean(0), (y.std(0) if len(hs) > 1 else torch.zeros(y.shape[1]))
        x = range(1, len(m) + 1)
        ax.plot(x, m, label=name)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def bars(results, ax=None, ylabel="test accuracy (%)", title=None):
    """Mean ± std bars; ``results`` maps a name to a list of accuracies in [0, 1]."""
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    names = list(results)
    ms = [mean_std(results[n]) for n in names]
    ax.bar(names, [m * 100 for m, _ in ms], yerr=[s * 100 for _, s in ms], capsize=6,
           color=["#999", "#3a7", "#37a", "#a73", "#a37"][:len(names)])
    lo = min(m - s for m, s in ms) * 100
    ax.set_ylim(max(0, lo - 5), min(100, max(m + s for m, s in ms) * 100 + 2))
    ax.set(ylabel=ylabel, title=title)
    return ax


def confusion(logits, labels, classes):
    """Counts: rows are true classes, columns predictions."""
    m = torch.zeros(classes, classes, dtype=torch.long)
    m.index_put_((labels.cpu(), logits.argmax(1).cpu()), torch.ones(len(labels), dtype=torch.long), accumulate=True)
    return m


def confusion_plot(matrix, ax=None, title=None):
    ax = ax or plt.subplots(figsize=(4, 4))[1]
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in zip(torch.cartesian_prod(torch.arange(len(matrix)), torch.arange(len(matrix))).tolist(),
                         matrix.flatten().tolist()):
        if v:
            ax.text(j, i, v, ha="center", va="center", fontsize=7, color="white" if v > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(len(matrix)), yticks=range(len(matrix)))
    return ax


def heatmap(values, rows, cols, ax=None, title=None, fmt="{:+.1f}", std=None, xlabel="T", ylabel="α"):
    """A grid of numbers (e.g. accuracy gain) with each cell labelled, ± std when given."""
    ax = ax or plt.subplots(figsize=(6, 4.5))[1]
    v = torch.as_tensor(values, dtype=torch.float64)
    lim = float(v.abs().max()) or 1.0
    im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            text = fmt.format(float(v[i, j])) + (f"\n±{float(std[i][j]):.1f}" if std is not None else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set(xticks=range(len(cols)), xticklabels=cols, yticks=range(len(rows)), yticklabels=rows,
           xlabel=xlabel, ylabel=ylabel, title=title)
    plt.colorbar(im, ax=ax)
    return ax


def gain(treated, baseline):
    """Difference of means and its standard error (Welch): how far apart two sets of seeds are,
    and how much of that the seed noise could explain."""
    (m1, s1), (m0, s0) = mean_std(treated), mean_std(baseline)
    return m1 - m0, (s1 ** 2 / len(treated) + s0 ** 2 / len(baseline)) ** 0.5
