"""Takes the screenshots in doc/img/ from a real dev cluster with jobs
running: the cluster page, the jobs page, and a job's page with a failed
chunk's attempts and stderr open. Needs chromium and chromedriver (as `make
test` installs them).

Usage: python scripts/dashboard_screenshots.py [OUTPUT_FOLDER (default doc/img)]
"""
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from uds import client

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "doc" / "img")
OUT.mkdir(parents=True, exist_ok=True)
folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-screenshots-")) / "dev"
PY = sys.executable
started = subprocess.run([PY, "-m", "uds.client.cli", "dev", "--detach", "--workers", "3", "--slots", "2", "--dir", str(folder), "--dashboard-port", "0"], capture_output=True, text=True)
print(started.stdout, started.stderr)
url = re.search(r"dashboard: (http://\S+/)", started.stdout).group(1)
options = webdriver.ChromeOptions()
for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,943", "--hide-scrollbars"):
    options.add_argument(argument)
options.binary_location = "/usr/bin/chromium"
driver = d = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def wait(condition):
    return WebDriverWait(d, 60, 0.1).until(condition)


WORK = b"""#!/bin/sh
sleep 0.$(( (UDS_CHUNK * 7) % 9 + 2 ))
cat "$UDS_INPUTS/corpus.idx" > /dev/null
echo "chunk $UDS_CHUNK of $UDS_CHUNKS: counted $(( UDS_CHUNK * 37 % 101 )) words"
echo "$UDS_CHUNK" > "$UDS_OUTPUT/part-$UDS_CHUNK.txt"
if [ $(( UDS_CHUNK % 23 )) -eq 11 ]; then echo "bad record at line 7" >&2; exit 2; fi
"""
try:
    with client.connect(folder) as c:
        d.get(url)
        prep = c.submit_job(b"#!/bin/sh\necho prepared\n", chunks=4, name="prepare-corpus", timeout=60)
        prep.wait(timeout=60)
        main = c.submit_job(WORK, chunks=200, name="count-words", timeout=60, after=[prep], args=["--lang", "en", "--min-length", "3"],
                            inputs={"stopwords.txt": b"a\nthe\nof\n", "corpus.idx": b"x" * 3000})
        merge = c.submit_job(b"#!/bin/sh\necho merged\n", name="merge-counts", after=[main], timeout=60)
        time.sleep(12)
        d.save_screenshot(str(OUT / "dashboard-cluster.png"))
        d.find_element(By.ID, "nav-jobs").click()
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.job-row"))
        time.sleep(1.5)
        d.save_screenshot(str(OUT / "dashboard-jobs.png"))
        d.find_element(By.CSS_SELECTOR, f"tr.job-row[data-job='{main.id}'] a.job-name").click()
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chunk-grid .chunk[data-index='11'][data-state=failed]"))
        time.sleep(1)
        d.find_element(By.CSS_SELECTOR, "#chunk-grid .chunk[data-index='11']").click()
        wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#chunk-panel .show-stderr:not([disabled])"))
        d.find_element(By.CSS_SELECTOR, "#chunk-panel .show-stderr").click()
        wait(lambda d: "bad record" in d.find_element(By.ID, "log-view").text)
        d.set_window_size(1280, 1143)
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)
        d.save_screenshot(str(OUT / "dashboard-job.png"))
        print("job state at shot:", main.status().state)
finally:
    d.quit()
    subprocess.run([PY, "-m", "uds.client.cli", "dev", "--stop", "--dir", str(folder)])
