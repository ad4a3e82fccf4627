// mschange's pair viewer: three linked NiiVue canvases (baseline, follow-up, difference),
// the change probability with a threshold slider, detections outlined by direction, the
// ground truth as a toggle, and a lesion table whose rows move every view to that change.
// Everything it shows is embedded in the page (a <script type="application/json"> block),
// so it opens from disk with no network and no server.
(function () {
  "use strict";
  const state = { errors: [], viewers: {}, overlays: {}, selected: null };
  window.mschangeViewer = state;
  window.addEventListener("error", (event) => state.errors.push(String(event.message)));
  window.addEventListener("unhandledrejection", (event) => state.errors.push(String(event.reason)));
  document.addEventListener("securitypolicyviolation", (event) =>
    state.errors.push("blocked by the page's security policy: " + event.violatedDirective),
  );

  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const NV = window.niivue;

  // Label colours: 1 new or enlarging, 2 shrinking (detections), 3 ground truth.
  const LABELS = {
    R: [0, 255, 0, 0],
    G: [0, 140, 200, 230],
    B: [0, 0, 255, 60],
    A: [0, 255, 255, 255],
    I: [0, 1, 2, 3],
    labels: ["", "new or enlarging", "shrinking", "ground truth"],
  };

  const LABEL_FILL = 0.25; // a light fill inside each outline

  async function volume(key, options) {
    const image = await NV.NVImage.loadFromBase64({
      base64: data.volumes[key],
      name: key + ".nii.gz",
      ...options,
    });
    if (options.labels) image.setColormapLabel(LABELS);
    return image;
  }

  async function addOutlines(nv) {
    // Ground truth first, so the detections' outlines are drawn over it.
    let truth = null;
    if (data.volumes.truth) {
      truth = await volume("truth", { labels: true, opacity: 0 });
      nv.addVolume(truth);
    }
    const detections = await volume("detections", { labels: true, opacity: LABEL_FILL });
    nv.addVolume(detections);
    nv.setAtlasOutline(1); // label maps (NIfTI intent "label") drawn with their outline
    return { detections, truth };
  }

  async function makeViewer(id, background, backgroundOptions) {
    const nv = new NV.Niivue({
      backColor: [0, 0, 0, 1],
      crosshairColor: [1, 1, 0, 0.8],
      multiplanarShowRender: 0, // axial, coronal and sagittal only: no 3D render
      multiplanarLayout: 3, // the three in a row
      isResizeCanvas: true,
      show3Dcrosshair: false,
    });
    await nv.attachTo(id);
    nv.addVolume(await volume(background, backgroundOptions));
    nv.setSliceType(nv.sliceTypeMultiplanar);
    return nv;
  }

  function showLocation(location) {
    if (location && location.string) {
      document.getElementById("location").textContent = location.string;
    }
  }

  function moveTo(mm) {
    for (const nv of Object.values(state.viewers)) {
      nv.scene.crosshairPos = nv.mm2frac(mm);
      nv.drawScene();
    }
    document.getElementById("location").textContent =
      "x " + mm[0].toFixed(1) + ", y " + mm[1].toFixed(1) + ", z " + mm[2].toFixed(1) + " mm";
  }

  function setThreshold(value) {
    const probability = state.overlays.probability;
    probability.cal_min = value;
    state.viewers.followup.updateGLVolume();
    document.getElementById("threshold-value").textContent = value.toFixed(2);
  }

  function setOpacity(images, opacity) {
    for (const [nv, image] of images) {
      image.opacity = opacity;
      nv.updateGLVolume();
    }
  }

  function wireControls() {
    const slider = document.getElementById("threshold");
    slider.addEventListener("input", () => setThreshold(Number(slider.value)));
    const probability = document.getElementById("show-probability");
    probability.addEventListener("change", () =>
      setOpacity([[state.viewers.followup, state.overlays.probability]], probability.checked ? 0.7 : 0),
    );
    const detections = document.getElementById("show-detections");
    detections.addEventListener("change", () =>
      setOpacity(state.overlays.detections, detections.checked ? LABEL_FILL : 0),
    );
    const truth = document.getElementById("show-truth");
    if (truth) {
      truth.addEventListener("change", () =>
        setOpacity(state.overlays.truth, truth.checked ? LABEL_FILL : 0),
      );
    }
    for (const row of document.querySelectorAll("#lesions tbody tr")) {
      row.addEventListener("click", () => {
        if (state.selected) state.selected.classList.remove("selected");
        row.classList.add("selected");
        state.selected = row;
        moveTo([Number(row.dataset.x), Number(row.dataset.y), Number(row.dataset.z)]);
      });
    }
  }

  async function start() {
    const anatomy = { cal_min: 0, cal_max: 1, trustCalMinMax: true };
    const baseline = await makeViewer("view-baseline", "baseline", anatomy);
    const followup = await makeViewer("view-followup", "followup", anatomy);
    const difference = await makeViewer("view-difference", "difference", {
      cal_min: -data.differenceRange,
      cal_max: data.differenceRange,
      trustCalMinMax: true,
    });
    state.viewers = { baseline, followup, difference };
    state.overlays.probability = await volume("probability", {
      colormap: "warm",
      cal_min: data.kappa,
      cal_max: 1,
      trustCalMinMax: true,
      opacity: 0.7,
    });
    followup.addVolume(state.overlays.probability);
    state.overlays.detections = [];
    state.overlays.truth = [];
    for (const nv of [baseline, followup, difference]) {
      const outlines = await addOutlines(nv);
      state.overlays.detections.push([nv, outlines.detections]);
      if (outlines.truth) state.overlays.truth.push([nv, outlines.truth]);
      nv.onLocationChange = showLocation;
    }
    // Crosshairs linked both ways: a click in any view moves the other two.
    baseline.broadcastTo([followup, difference], { "2d": true, "3d": false });
    followup.broadcastTo([baseline, difference], { "2d": true, "3d": false });
    difference.broadcastTo([baseline, followup], { "2d": true, "3d": false });
    wireControls();
    moveTo(data.start);
  }

  state.ready = start()
    .then(() => document.body.setAttribute("data-viewer", "ready"))
    .catch((error) => {
      state.errors.push(String(error && error.stack ? error.stack : error));
      document.body.setAttribute("data-viewer", "failed");
      document.getElementById("location").textContent = "The viewer could not start: " + error;
    });
})();
