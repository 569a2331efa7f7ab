<#
.SYNOPSIS
  Builds the xiaozhi-server offline package on a Windows machine with internet and Docker
  Desktop (Linux containers): the PowerShell twin of compose/offline-package.sh.

.DESCRIPTION
  The same six steps as offline-package.sh, every Linux tool running in containers:
    1. checks: Docker answers, enough free disk, the base images are here (or can be pulled)
    2. the build context: the source tree plus offline/ (compose/prepare-context.sh in a
       container of the builder image: Debian packages, vendored crates, models, ONNX Runtime)
    3. the Debian packages the runtime image lacks
    4. docker build --network=none -f Dockerfile-server-offline
    5. docker save of the server and Redis images
    6. xiaozhi-offline-<version>-<date>.tar.gz with SHA256SUMS, packed in a container so that
       scripts keep Unix line endings and modes (offline-deploy.sh also repairs CRLF endings).

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File compose\offline-package.ps1 -Out C:\xiaozhi
#>
param(
    [string]$Out = "",
    [string]$BuilderImage = $(if ($env:BUILDER_IMAGE) { $env:BUILDER_IMAGE } else { "rust:1.95-bookworm" }),
    [string]$RuntimeImage = $(if ($env:RUNTIME_IMAGE) { $env:RUNTIME_IMAGE } else { "debian:bookworm-slim" }),
    [string]$RedisImage = $(if ($env:REDIS_IMAGE) { $env:REDIS_IMAGE } else { "redis:7-bookworm" }),
    [string]$TimeZone = "Asia/Shanghai",
    [switch]$BakeModels
)
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path (Join-Path $PSScriptRoot "..")).Path
if (-not $Out) { $Out = Join-Path $Root "target\offline" }
$Work = Join-Path $Root "target\offline\work"
$Version = (Select-String -Path (Join-Path $Root "Cargo.toml") -Pattern '^version = "(.*)"' | Select-Object -First 1).Matches[0].Groups[1].Value
$ServerImage = if ($env:SERVER_IMAGE) { $env:SERVER_IMAGE } else { "xiaozhi-server:$Version" }
$RuntimePackages = "libopus0 espeak-ng tzdata ca-certificates"
$Started = Get-Date

function Step($n, $text) { Write-Host ("==> [{0}/6] {1} ({2:N0} s)" -f $n, $text, ((Get-Date) - $Started).TotalSeconds) }
function Fail($text) { Write-Error "offline-package.ps1: error: $text"; exit 1 }
function Docker { & docker @args; if ($LASTEXITCODE -ne 0) { Fail "docker $($args -join ' ') failed" } }

Step 1 "checks"
if (-not (Get-Command docker -ErrorAction SilentlyContinue)) { Fail "docker is not installed (Docker Desktop)" }
& docker info *> $null
if ($LASTEXITCODE -ne 0) { Fail "the Docker engine does not answer: is Docker Desktop running (Linux containers)?" }
New-Item -ItemType Directory -Force -Path $Out, $Work | Out-Null
foreach ($dir in @($Out, $Work)) {
    $drive = (Get-Item $dir).PSDrive
    if ($drive.Free -lt 8GB) { Fail ("only {0:N1} GB free on {1}:; the build needs about 8 GB" -f ($drive.Free / 1GB), $drive.Name) }
}
foreach ($image in @($BuilderImage, $RuntimeImage, $RedisImage)) {
    & docker image inspect $image *> $null
    if ($LASTEXITCODE -ne 0) { Write-Host "    pulling $image"; Docker pull -q $image | Out-Null }
}

Step 2 "build context in $Work"
$Ctx = Join-Path $Work "context"
$Models = Join-Path $Work "models"
New-Item -ItemType Directory -Force -Path $Ctx, $Models | Out-Null
Get-ChildItem $Ctx -Force | Where-Object Name -ne "offline" | Remove-Item -Recurse -Force
# The sources: git's tracked and new files when git is installed, else the tree without build output.
if (Get-Command git -ErrorAction SilentlyContinue) {
    Push-Location $Root
    $files = & git ls-files --cached --others --exclude-standard
    Pop-Location
    foreach ($f in $files) {
        $src = Join-Path $Root $f
        if (Test-Path $src -PathType Leaf) {
            $dst = Join-Path $Ctx $f
            New-Item -ItemType Directory -Force -Path (Split-Path $dst) | Out-Null
            Copy-Item $src $dst
        }
    }
} else {
    Get-ChildItem $Root -Force | Where-Object { $_.Name -notin @("target", "data", ".git") } |
        Copy-Item -Destination $Ctx -Recurse -Force
}
$Trust = @()
foreach ($var in "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY") {
    if ([Environment]::GetEnvironmentVariable($var)) { $Trust += @("-e", $var) }
}
$CargoHome = if ($env:CARGO_HOME) { $env:CARGO_HOME } else { Join-Path $HOME ".cargo" }
$CargoCache = if (Test-Path (Join-Path $CargoHome "registry")) { Join-Path $CargoHome "registry" } else { Join-Path $Work "cargo-registry" }
New-Item -ItemType Directory -Force -Path $CargoCache | Out-Null
# Scripts checked out with CRLF (git autocrlf) would not run in the Linux container: strip them there.
Docker run --rm @Trust -v "${Ctx}:/ctx" -v "${Models}:/models" -v "${CargoCache}:/cargo-home/registry" `
    -e CARGO_HOME=/cargo-home $BuilderImage bash -c `
    "find /ctx -name '*.sh' -exec sed -i 's/\r$//' {} + && chmod +x /ctx/compose/*.sh /ctx/models/*.sh /ctx/extensions/*.sh && bash /ctx/compose/prepare-context.sh"
$CtxModels = Join-Path $Ctx "offline\models"
if (Test-Path $CtxModels) { Remove-Item -Recurse -Force $CtxModels }
New-Item -ItemType Directory -Force -Path $CtxModels | Out-Null
if ($BakeModels) {
    Copy-Item (Join-Path $Models "*") $CtxModels -Recurse -Force
    Remove-Item -Recurse -Force (Join-Path $CtxModels "lib") -ErrorAction SilentlyContinue
}

Step 3 "Debian packages the runtime image lacks: $RuntimePackages"
$Debs = Join-Path $Ctx "offline\debs\runtime"
if (Test-Path $Debs) { Remove-Item -Recurse -Force $Debs }
New-Item -ItemType Directory -Force -Path $Debs | Out-Null
Docker run --rm @Trust -v "${Debs}:/out" $RuntimeImage bash -c `
    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --download-only -o Dir::Cache::Archives=/out $RuntimePackages >/dev/null && rm -rf /out/partial /out/lock"

Step 4 "docker build --network=none ($ServerImage)"
$BakeArg = if ($BakeModels) { "1" } else { "0" }
Docker build --network=none -f (Join-Path $Ctx "Dockerfile-server-offline") `
    --build-arg BUILDER_IMAGE=$BuilderImage --build-arg RUNTIME_IMAGE=$RuntimeImage --build-arg BAKE_MODELS=$BakeArg `
    -t $ServerImage $Ctx

Step 5 "docker save $ServerImage $RedisImage"
$Name = "xiaozhi-offline-$Version-$(Get-Date -Format yyyyMMdd)"
$Pkg = Join-Path $Work $Name
if (Test-Path $Pkg) { Remove-Item -Recurse -Force $Pkg }
New-Item -ItemType Directory -Force -Path (Join-Path $Pkg "images"), (Join-Path $Pkg "config") | Out-Null
Docker save -o (Join-Path $Pkg "images\images.tar") $ServerImage $RedisImage

Step 6 "package $Out\$Name.tar.gz"
foreach ($f in "offline-deploy.sh", "backup.sh", "common.sh", "docker-compose.yml", "docker-compose.embedded.yml") {
    Copy-Item (Join-Path $Root "compose\$f") $Pkg
}
Copy-Item (Join-Path $Root "compose\config\*.yaml") (Join-Path $Pkg "config")
$Container = (& docker create $ServerImage).Trim()
Docker cp "${Container}:/opt/xiaozhi/extensions" (Join-Path $Pkg "extensions")
Docker rm $Container | Out-Null
Copy-Item $Models (Join-Path $Pkg "models") -Recurse
Remove-Item -Recurse -Force (Join-Path $Pkg "models\lib") -ErrorAction SilentlyContinue
$EnvText = Get-Content -Raw (Join-Path $Root "compose\env.template")
$EnvText = $EnvText.Replace("@SERVER_IMAGE@", $ServerImage).Replace("@REDIS_IMAGE@", $RedisImage).Replace("@TZ@", $TimeZone)
$EnvText | Set-Content -NoNewline -Encoding ascii (Join-Path $Pkg ".env")
$Version | Set-Content -NoNewline -Encoding ascii (Join-Path $Pkg "VERSION")
# Unix line endings, checksums and the tarball, made by Linux tools in a container.
Docker run --rm -v "${Work}:/work" -v "${Out}:/out" $RuntimeImage bash -c `
    "cd /work/$Name && find . -type f \( -name '*.sh' -o -name '*.yml' -o -name '*.yaml' -o -name '.env' -o -name '*.toml' \) -exec sed -i 's/\r$//' {} + && echo >> VERSION && chmod 0755 *.sh && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS && cd /work && tar -cf - $Name | gzip -1 > /out/$Name.tar.gz"
Remove-Item -Recurse -Force $Pkg
$Size = (Get-Item (Join-Path $Out "$Name.tar.gz")).Length / 1MB
Write-Host ("==> {0}\{1}.tar.gz: {2:N0} MB, in {3:N0} s" -f $Out, $Name, $Size, ((Get-Date) - $Started).TotalSeconds)
