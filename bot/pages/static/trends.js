// Draws the trend page's plots with plotly.js from the data embedded in the page.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("trend-data").textContent);
  const setSelect = document.getElementById("set");
  const bandSelect = document.getElementById("band");
  const MERGED = "#57606a";
  const CURRENT = "#d1242f";

  function boxTrace(name, color, points, x) {
    const kept = points.map((summary, i) => [summary, x[i]]).filter(([s]) => s);
    return {
      type: "box",
      name: name,
      x: kept.map(([, position]) => position),
      q1: kept.map(([s]) => s.q1),
      median: kept.map(([s]) => s.median),
      q3: kept.map(([s]) => s.q3),
      lowerfence: kept.map(([s]) => s.low),
      upperfence: kept.map(([s]) => s.high),
      mean: kept.map(([s]) => s.mean),
      text: kept.map(([s]) => "n = " + s.n),
      boxpoints: false,
      marker: { color: color },
      line: { color: color },
      xaxis: "x",
      yaxis: "y",
    };
  }

  function traces(metric, set) {
    const merges = data.merges;
    const boxes = data.boxes[metric.name].map((sets) => sets[set] || null);
    const positions = merges.map((_, i) => i);
    const result = [boxTrace("merged branches", MERGED, boxes, positions)];
    if (data.current) {
      const summary = data.current.summaries[metric.name][set] || null;
      const label = "PR " + data.current.label;
      result.push(boxTrace(label, CURRENT, [summary], [merges.length]));
    }
    const medians = (data.history.medians[metric.name] || {})[set] || [];
    result.push({
      type: "scatter",
      mode: "lines+markers",
      name: "median, every merge",
      x: data.history.points.map((_, i) => i),
      y: medians,
      text: data.history.points.map((p) => p.label),
      hovertemplate: "%{text}: %{y}<extra></extra>",
      connectgaps: true,
      line: { color: MERGED, width: 1.5 },
      marker: { size: 4 },
      xaxis: "x2",
      yaxis: "y2",
    });
    return result;
  }

  function layout(metric) {
    const labels = data.merges.map((p) => p.label);
    if (data.current) labels.push("PR " + data.current.label);
    const zero = metric.direction === "zero";
    return {
      margin: { l: 70, r: 20, t: 10, b: 40 },
      showlegend: true,
      legend: { orientation: "h", y: 1.08 },
      xaxis: {
        tickmode: "array",
        tickvals: labels.map((_, i) => i),
        ticktext: labels,
        tickangle: -30,
        range: [-0.6, labels.length - 0.4],
        anchor: "y",
      },
      yaxis: {
        title: { text: metric.label },
        domain: [0.4, 1],
        zeroline: zero,
        zerolinecolor: "#8c959f",
      },
      xaxis2: { anchor: "y2", title: { text: "every merge, in order" }, showticklabels: false },
      yaxis2: { domain: [0, 0.22], title: { text: "median" } },
    };
  }

  function draw() {
    const set = setSelect.value;
    const band = bandSelect.value;
    for (const metric of data.metrics) {
      const section = document.getElementById("metric-" + metric.name);
      section.hidden = metric.band !== null && metric.band !== band;
      if (section.hidden) continue;
      const plot = section.querySelector(".plot");
      Plotly.react(plot, traces(metric, set), layout(metric), {
        displaylogo: false,
        responsive: true,
      });
    }
    const query = new URLSearchParams(window.location.search);
    query.set("set", set);
    query.set("band", band);
    window.history.replaceState(null, "", "?" + query.toString());
  }

  setSelect.addEventListener("change", draw);
  bandSelect.addEventListener("change", draw);
  draw();
  document.body.dataset.drawn = "true";
})();
